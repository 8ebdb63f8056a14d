// The management API's JSON handling and the state file's parser.
//
// Each input is given, as it is, to:
//  - api::parse_registration (POST /servers): when it accepts, the URL is normalised (parsing
//    it again gives the same backend), the weight is 0 or 1..256, a "check" is an object that
//    apply_check_json accepts, and the registration survives a trip through the state file
//    (save_state_file, then load_state_file gives it back: what the API accepts, a restart reads);
//  - apply_check_json (PUT /config/health-check, and each backend's "check"): when it accepts,
//    the settings validate, and to_json() of them parses back to the same settings;
//  - load_state_file (the input written to a file): when it accepts, every URL is valid, and
//    saving what it read then loading it again gives the same entries;
//  - parse_backend_url, id_from_path (split at the first '/') and parse_duration: when they
//    accept, their output parses again to the same thing.
// Anything but StateFileError out of load_state_file is a failure too.

#include "fuzz_common.hpp"

#include "api/json.hpp"

#include <weldr/health_checker.hpp>
#include <weldr/pool.hpp>
#include <weldr/state_file.hpp>

#include <sanitizer/common_interface_defs.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <stdexcept>

namespace {

using fuzz::escaped;

// A private directory, on tmpfs where there is one (save_state_file fsyncs).
const std::string& directory() {
  static const std::string dir = [] {
    std::string pattern =
        (access("/dev/shm", W_OK) == 0 ? std::string("/dev/shm") : std::string("/tmp")) + "/weldr-fuzz-json-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) std::abort();
    static std::string cleanup;
    cleanup = pattern;
    static void (*remove)() = [] {
      for (const std::string& name :
           {std::string("/input.json"), std::string("/saved.json"), "/saved.json.tmp." + std::to_string(getpid())})
        unlink((cleanup + name).c_str());
      rmdir(cleanup.c_str());
    };
    // At exit, after a failed check, and when a sanitizer stops the process.
    std::atexit(remove);
    fuzz::on_failure() = remove;
    __sanitizer_set_death_callback(remove);
    return pattern;
  }();
  return dir;
}

void write_file(const std::string& path, std::string_view text) {
  const int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) std::abort();
  while (!text.empty()) {
    const ssize_t n = ::write(fd, text.data(), text.size());
    if (n <= 0) std::abort();
    text.remove_prefix(static_cast<std::size_t>(n));
  }
  ::close(fd);
}

bool same(const weldr::HealthCheckOptions& a, const weldr::HealthCheckOptions& b) {
  return a.type == b.type && a.path == b.path && a.host == b.host && a.expect_min == b.expect_min &&
         a.expect_max == b.expect_max && a.interval == b.interval && a.timeout == b.timeout &&
         a.failures == b.failures && a.passes == b.passes;
}

std::string describe(const std::vector<weldr::StoredBackend>& list) {
  std::string out;
  for (const auto& b : list)
    out += "\n       {url '" + escaped(b.url) + "', check '" + escaped(b.check) + "', weight " +
           std::to_string(b.weight) + "}";
  return out;
}

// Saves `list`, loads it back: it must be the same.
void round_trip(const std::vector<weldr::StoredBackend>& list, const std::string& context) {
  const std::string path = directory() + "/saved.json";
  try {
    weldr::save_state_file(path, list);
  } catch (const std::exception& e) {
    FUZZ_CHECK(false, context + ": save_state_file threw: " + e.what() + describe(list));
  }
  std::vector<weldr::StoredBackend> back;
  try {
    back = weldr::load_state_file(path);
  } catch (const std::exception& e) {
    FUZZ_CHECK(false, context + ": the state file it wrote cannot be loaded: " + e.what() + describe(list));
  }
  FUZZ_CHECK(back == list, context + ": the state file gives back something else:" + describe(list) + "\n     became" +
                               describe(back));
}

void check_url(std::string_view text) {
  std::error_code ec;
  const auto a = weldr::parse_backend_url(text, ec);
  if (!a) return;
  const auto b = weldr::parse_backend_url(a->url, ec);
  FUZZ_CHECK(b && b->url == a->url && b->id() == a->id() && b->host == a->host && b->port == a->port,
             "parse_backend_url('" + escaped(text) + "') gave '" + escaped(a->url) + "', which does not parse back");
  FUZZ_CHECK(a->port != 0, "port 0 accepted");
}

void check_registration(std::string_view text) {
  std::string error;
  const auto reg = weldr::api::parse_registration(text, error);
  if (!reg) {
    FUZZ_CHECK(!error.empty(), "parse_registration refused without saying why");
    return;
  }
  auto context = [&] { return std::string("registration '" + escaped(text) + "'"); };
  std::error_code ec;
  const auto again = weldr::parse_backend_url(reg->address.url, ec);
  FUZZ_CHECK(again && again->id() == reg->address.id(), context() + ": URL '" + escaped(reg->address.url) + "'");
  FUZZ_CHECK(reg->weight <= 256, context() + ": weight " + std::to_string(reg->weight));
  if (!reg->check.empty()) {
    std::string check_error;
    FUZZ_CHECK(weldr::apply_check_json(weldr::HealthCheckOptions{}, reg->check, check_error).has_value(),
               context() + ": its check '" + escaped(reg->check) + "' is refused: " + check_error);
  }
  round_trip({{reg->address.url, reg->check, reg->weight == 0 ? 1u : reg->weight}}, context());
}

void check_health(std::string_view text) {
  std::string error;
  const auto options = weldr::apply_check_json(weldr::HealthCheckOptions{}, text, error);
  if (!options) {
    FUZZ_CHECK(!error.empty(), "apply_check_json refused without saying why");
    return;
  }
  auto context = [&] { return std::string("check settings '" + escaped(text) + "'"); };
  FUZZ_CHECK(options->validate().empty(), context() + ": accepted, yet validate() says " + options->validate());
  const std::string json = weldr::to_json(*options);
  std::string again_error;
  const auto again = weldr::apply_check_json(weldr::HealthCheckOptions{}, json, again_error);
  FUZZ_CHECK(again.has_value(), context() + ": to_json gave '" + escaped(json) + "', refused: " + again_error);
  FUZZ_CHECK(same(*again, *options), context() + ": to_json gave '" + escaped(json) + "', which reads differently");
}

void check_state_file(std::string_view text) {
  const std::string path = directory() + "/input.json";
  write_file(path, text);
  std::vector<weldr::StoredBackend> list;
  try {
    list = weldr::load_state_file(path);
  } catch (const weldr::StateFileError& e) {
    FUZZ_CHECK(std::string_view(e.what()).find(path) != std::string_view::npos, "error without the path");
    return;
  }
  // Anything else escapes and aborts: load_state_file promises StateFileError.
  auto context = [&] { return std::string("state file '" + escaped(text) + "'"); };
  for (const auto& b : list) {
    std::error_code ec;
    FUZZ_CHECK(weldr::parse_backend_url(b.url, ec).has_value(), context() + ": invalid URL loaded: " + escaped(b.url));
    FUZZ_CHECK(b.weight >= 1 && b.weight <= 256, context() + ": weight " + std::to_string(b.weight));
  }
  round_trip(list, context());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  check_registration(text);
  check_health(text);
  check_state_file(text);

  check_url(text);
  const auto slash = text.find('/');
  std::string error;
  if (const auto id = weldr::api::id_from_path(text.substr(0, slash),
                                               slash == std::string_view::npos ? "" : text.substr(slash + 1), error)) {
    std::error_code ec;
    const auto a = weldr::parse_backend_url(*id, ec);
    FUZZ_CHECK(a && a->id() == *id, "id_from_path gave '" + escaped(*id) + "', which does not parse back");
  }
  if (const auto d = weldr::parse_duration(text)) FUZZ_CHECK(d->count() >= 0, "negative duration");
  return 0;
}
