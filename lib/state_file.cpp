#include <weldr/state_file.hpp>

#include "log_internal.hpp"

#include <fmt/format.h>
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <initializer_list>
#include <map>
#include <string_view>
#include <system_error>
#include <utility>

namespace weldr {
namespace {

constexpr int kFormatVersion = 1;
// A registration takes about a hundred bytes; a file this large is not one weldr wrote.
constexpr std::size_t kMaxFileSize = 64 * 1024 * 1024;
// User data quoted in an error message is cut here, so that one bad entry cannot flood the log.
constexpr std::size_t kMaxQuoted = 200;

class UniqueFd {
 public:
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  [[nodiscard]] int get() const noexcept { return fd_; }
  // Closes now, so that the error of close() (delayed write errors on some file systems) is seen.
  [[nodiscard]] int close() noexcept {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

// errno is read before the message is formatted, which may allocate.
template <typename... Args>
[[noreturn]] void throw_errno(fmt::format_string<Args...> format, Args&&... args) {
  const int error = errno;
  throw std::system_error(error, std::generic_category(), fmt::format(format, std::forward<Args>(args)...));
}

[[noreturn]] void fail(const std::string& path, std::string_view what) {
  throw StateFileError(fmt::format("state file {}: {}", path, what));
}

std::string errno_text(int error) {
  return std::error_code(error, std::generic_category()).message();
}

std::string to_compact_json(const rapidjson::Value& value) {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
  value.Accept(writer);
  return {buffer.GetString(), buffer.GetSize()};
}

// A JSON string literal, so that control characters and quotes in a bad entry stay readable.
std::string quoted(std::string_view text) {
  const bool cut = text.size() > kMaxQuoted;
  if (cut) text = text.substr(0, kMaxQuoted);
  const rapidjson::Value value(rapidjson::StringRef(text.data(), text.size()));
  std::string out = to_compact_json(value);
  if (cut) out += "...";
  return out;
}

std::string_view type_name(const rapidjson::Value& value) {
  switch (value.GetType()) {
    case rapidjson::kNullType: return "null";
    case rapidjson::kFalseType:
    case rapidjson::kTrueType: return "a boolean";
    case rapidjson::kObjectType: return "an object";
    case rapidjson::kArrayType: return "an array";
    case rapidjson::kStringType: return "a string";
    case rapidjson::kNumberType: return "a number";
  }
  return "an unknown value";
}

std::string_view member_name(const rapidjson::Value& name) {
  return {name.GetString(), name.GetStringLength()};
}

// Rejects members the format does not have (a typo such as "chek" must not be dropped
// silently) and members given twice (RapidJSON keeps both; which one wins is not obvious).
void check_members(const std::string& path, const std::string& where, const rapidjson::Value& object,
                   std::initializer_list<std::string_view> allowed) {
  std::map<std::string_view, int> seen;
  for (const auto& member : object.GetObject()) {
    const std::string_view name = member_name(member.name);
    const std::string prefix = where.empty() ? std::string() : where + ": ";
    if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
      fail(path, fmt::format("{}unknown member {}", prefix, quoted(name)));
    }
    if (++seen[name] > 1) fail(path, fmt::format("{}member {} appears twice", prefix, quoted(name)));
  }
}

std::vector<StoredBackend> parse_state(const std::string& path, const std::string& text) {
  if (text.empty()) fail(path, "the file is empty (expected a JSON object with \"version\" and \"servers\")");
  rapidjson::Document doc;
  doc.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseValidateEncodingFlag>(text.data(), text.size());
  if (doc.HasParseError()) {
    fail(path, fmt::format("invalid JSON at offset {}: {}", doc.GetErrorOffset(),
                           rapidjson::GetParseError_En(doc.GetParseError())));
  }
  if (!doc.IsObject()) fail(path, fmt::format("expected a JSON object at the top level, got {}", type_name(doc)));
  check_members(path, "", doc, {"version", "servers"});

  const auto version = doc.FindMember("version");
  if (version == doc.MemberEnd()) fail(path, "missing \"version\"");
  if (!version->value.IsInt() || version->value.GetInt() != kFormatVersion) {
    fail(path, fmt::format("unsupported version {} (this weldr reads version {})", to_compact_json(version->value),
                           kFormatVersion));
  }
  const auto servers = doc.FindMember("servers");
  if (servers == doc.MemberEnd()) fail(path, "missing \"servers\"");
  if (!servers->value.IsArray())
    fail(path, fmt::format("servers: expected an array, got {}", type_name(servers->value)));

  std::vector<StoredBackend> out;
  std::map<std::string, std::size_t> index_of_id;
  std::size_t i = 0;
  for (const auto& server : servers->value.GetArray()) {
    const std::string where = fmt::format("servers[{}]", i);
    if (!server.IsObject()) fail(path, fmt::format("{}: expected an object, got {}", where, type_name(server)));
    check_members(path, where, server, {"url", "check", "weight"});

    const auto url = server.FindMember("url");
    if (url == server.MemberEnd()) fail(path, fmt::format("{}: missing \"url\"", where));
    if (!url->value.IsString()) {
      fail(path, fmt::format("{}.url: expected a string, got {}", where, type_name(url->value)));
    }
    const std::string_view url_text(url->value.GetString(), url->value.GetStringLength());
    std::error_code ec;
    const auto address = parse_backend_url(url_text, ec);
    if (!address) fail(path, fmt::format("{}.url: invalid backend URL {}", where, quoted(url_text)));
    const auto [previous, inserted] = index_of_id.emplace(address->id(), i);
    if (!inserted) {
      fail(path, fmt::format("{}.url: {} is the same backend as servers[{}] ({})", where, quoted(url_text),
                             previous->second, address->id()));
    }

    StoredBackend stored{address->url, {}, 1};
    if (const auto weight = server.FindMember("weight"); weight != server.MemberEnd()) {
      if (!weight->value.IsUint() || weight->value.GetUint() < 1 || weight->value.GetUint() > 256) {
        fail(path, fmt::format("{}.weight: expected an integer from 1 to 256", where));
      }
      stored.weight = weight->value.GetUint();
    }
    if (const auto check = server.FindMember("check"); check != server.MemberEnd()) {
      if (!check->value.IsObject()) {
        fail(path, fmt::format("{}.check: expected an object, got {}", where, type_name(check->value)));
      }
      stored.check = to_compact_json(check->value);
    }
    out.push_back(std::move(stored));
    ++i;
  }
  return out;
}

std::string serialize_state(const std::vector<StoredBackend>& backends) {
  // Every check is parsed before anything is written, so that a bad one changes no file.
  std::vector<rapidjson::Document> checks(backends.size());
  for (std::size_t i = 0; i < backends.size(); ++i) {
    const std::string& check = backends[i].check;
    if (check.empty()) continue;
    checks[i].Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseValidateEncodingFlag>(check.data(), check.size());
    if (checks[i].HasParseError() || !checks[i].IsObject()) {
      throw std::invalid_argument(
          fmt::format("backend {}: health-check settings are not a JSON object: {}", backends[i].url, quoted(check)));
    }
  }

  rapidjson::StringBuffer buffer;
  rapidjson::PrettyWriter<rapidjson::StringBuffer> writer(buffer);
  writer.SetIndent(' ', 2);
  writer.StartObject();
  writer.Key("version");
  writer.Int(kFormatVersion);
  writer.Key("servers");
  writer.StartArray();
  for (std::size_t i = 0; i < backends.size(); ++i) {
    const std::string& url = backends[i].url;
    writer.StartObject();
    writer.Key("url");
    writer.String(url.data(), static_cast<rapidjson::SizeType>(url.size()));
    if (!backends[i].check.empty()) {
      writer.Key("check");
      checks[i].Accept(writer);
    }
    if (backends[i].weight != 1) {
      writer.Key("weight");
      writer.Uint(backends[i].weight);
    }
    writer.EndObject();
  }
  writer.EndArray();
  writer.EndObject();
  std::string out(buffer.GetString(), buffer.GetSize());
  out += '\n';
  return out;
}

std::string directory_of(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

void write_all(int fd, std::string_view data, const std::string& name) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot write {}", name);
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
}

}  // namespace

std::vector<StoredBackend> load_state_file(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT) return {};
    fail(path, "cannot open: " + errno_text(errno));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail(path, "cannot stat: " + errno_text(errno));
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
  if (static_cast<std::uint64_t>(st.st_size) > kMaxFileSize) {
    fail(path, fmt::format("larger than {} bytes: not a weldr state file", kMaxFileSize));
  }

  std::string text;
  char chunk[16 * 1024];
  for (;;) {
    const ssize_t n = ::read(fd.get(), chunk, sizeof chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(path, "cannot read: " + errno_text(errno));
    }
    if (n == 0) break;
    text.append(chunk, static_cast<std::size_t>(n));
    if (text.size() > kMaxFileSize) {
      fail(path, fmt::format("larger than {} bytes: not a weldr state file", kMaxFileSize));
    }
  }
  return parse_state(path, text);
}

void save_state_file(const std::string& path, const std::vector<StoredBackend>& backends) {
  const std::string text = serialize_state(backends);
  const std::string temp = fmt::format("{}.tmp.{}", path, ::getpid());

  UniqueFd fd(::open(temp.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644));
  if (fd.get() < 0) throw_errno("cannot create {}", temp);
  try {
    write_all(fd.get(), text, temp);
    if (::fsync(fd.get()) != 0) throw_errno("cannot fsync {}", temp);
    if (fd.close() != 0) throw_errno("cannot close {}", temp);
    if (::rename(temp.c_str(), path.c_str()) != 0) throw_errno("cannot rename {} to {}", temp, path);
  } catch (...) {
    ::unlink(temp.c_str());
    throw;
  }

  // The rename is durable only once the directory entry is on disk too.
  const std::string dir = directory_of(path);
  UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.get() < 0) throw_errno("cannot open directory {}", dir);
  if (::fsync(dir_fd.get()) != 0) throw_errno("cannot fsync directory {}", dir);
}

StateFile::StateFile(Pool& pool, std::string path) : pool_(pool), path_(std::move(path)) {}

StateFile::~StateFile() {
  if (subscription_ != 0) pool_.unsubscribe(subscription_);
}

void StateFile::start() {
  if (subscription_ != 0) throw std::logic_error("StateFile::start called twice");
  auto stored = load_state_file(path_);
  for (auto& entry : stored) {
    std::error_code ec;
    const auto address = parse_backend_url(entry.url, ec);
    if (!address) fail(path_, fmt::format("invalid backend URL {}", quoted(entry.url)));
    pool_.add(*address, std::move(entry.check), entry.weight);
  }
  // Subscribed before the first write: a change made meanwhile is either in that write's
  // Pool::list() or triggers a write of its own after it.
  subscription_ = pool_.subscribe([this](const PoolEvent& event) { on_event(event); });
  try {
    save();
  } catch (const std::exception& e) {
    pool_.unsubscribe(subscription_);
    subscription_ = 0;
    fail(path_, fmt::format("cannot write: {}", e.what()));
  }
  detail::log(LogLevel::info, "state file {}: loaded {} backend{}", path_, stored.size(),
              stored.size() == 1 ? "" : "s");
}

std::string StateFile::last_error() const {
  std::lock_guard lock(error_mutex_);
  return last_error_;
}

void StateFile::on_event(const PoolEvent& event) {
  // Health state is not persisted: a restarted weldr checks its backends afresh.
  if (event.kind != PoolEvent::Kind::added && event.kind != PoolEvent::Kind::removed &&
      event.kind != PoolEvent::Kind::reweighted) {
    return;
  }
  try {
    save();
  } catch (const std::exception& e) {
    // The change stands in the pool; the file catches up at the next successful write.
    std::string message = fmt::format("state file {}: cannot save the pool: {}", path_, e.what());
    detail::log(LogLevel::error, "{}", message);
    std::lock_guard lock(error_mutex_);
    last_error_ = std::move(message);
  }
}

void StateFile::save() {
  std::lock_guard write_lock(write_mutex_);
  std::vector<StoredBackend> backends;
  for (const auto& backend : pool_.list()) {
    // A removed backend drains for a while; it must not come back after a restart.
    if (backend->state() != BackendState::draining)
      backends.push_back({backend->url(), backend->check(), backend->weight()});
  }
  save_state_file(path_, backends);
  bool recovered = false;
  {
    std::lock_guard lock(error_mutex_);
    recovered = !last_error_.empty();
    last_error_.clear();
  }
  if (recovered) detail::log(LogLevel::info, "state file {}: written again", path_);
}

}  // namespace weldr
