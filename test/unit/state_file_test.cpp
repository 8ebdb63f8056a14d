#include <weldr/state_file.hpp>

#include <weldr/log.hpp>
#include <weldr/pool.hpp>

#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

using weldr::load_state_file;
using weldr::Pool;
using weldr::save_state_file;
using weldr::StateFile;
using weldr::StateFileError;
using weldr::StoredBackend;

namespace {

// A fresh directory under /tmp, removed with everything in it at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string pattern = "/tmp/weldr-state-test-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) throw std::system_error(errno, std::generic_category(), "mkdtemp");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  [[nodiscard]] std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  REQUIRE(out.good());
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string temp_name(const std::string& path) {
  return path + ".tmp." + std::to_string(::getpid());
}

std::vector<std::string> urls_in(const std::string& path) {
  std::vector<std::string> out;
  for (const auto& entry : load_state_file(path))
    out.push_back(entry.url);
  return out;
}

std::vector<std::string> urls_in(const Pool& pool) {
  std::vector<std::string> out;
  for (const auto& backend : pool.list())
    out.push_back(backend->url());
  return out;
}

weldr::BackendAddress address(std::string_view url) {
  std::error_code ec;
  auto parsed = weldr::parse_backend_url(url, ec);
  REQUIRE(parsed);
  return *parsed;
}

// Collects error lines for the duration of a test, then restores the default sink.
class LogCapture {
 public:
  LogCapture() {
    weldr::set_log_sink([this](weldr::LogLevel level, std::string_view line) {
      if (level != weldr::LogLevel::error) return;
      std::lock_guard lock(mutex_);
      errors_.emplace_back(line);
    });
  }
  ~LogCapture() { weldr::set_log_sink({}); }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;

  std::vector<std::string> errors() {
    std::lock_guard lock(mutex_);
    return errors_;
  }

 private:
  std::mutex mutex_;
  std::vector<std::string> errors_;
};

}  // namespace

TEST_CASE("a state file round-trips registrations with and without a check", "[state]") {
  TempDir dir;
  const std::string path = dir.file("state.json");
  const std::vector<StoredBackend> backends{
      {"http://127.0.0.1:9001", ""},
      {"http://127.0.0.1:9002", R"({"type":"http","path":"/health","interval_ms":500})"},
      {"http://[::1]:9003", ""},
  };
  save_state_file(path, backends);
  CHECK(load_state_file(path) == backends);
  CHECK(read_text(path) ==
        "{\n"
        "  \"version\": 1,\n"
        "  \"servers\": [\n"
        "    {\n"
        "      \"url\": \"http://127.0.0.1:9001\"\n"
        "    },\n"
        "    {\n"
        "      \"url\": \"http://127.0.0.1:9002\",\n"
        "      \"check\": {\n"
        "        \"type\": \"http\",\n"
        "        \"path\": \"/health\",\n"
        "        \"interval_ms\": 500\n"
        "      }\n"
        "    },\n"
        "    {\n"
        "      \"url\": \"http://[::1]:9003\"\n"
        "    }\n"
        "  ]\n"
        "}\n");
  CHECK_FALSE(std::filesystem::exists(temp_name(path)));

  save_state_file(path, {});
  CHECK(load_state_file(path).empty());
  CHECK(read_text(path) == "{\n  \"version\": 1,\n  \"servers\": []\n}\n");

  // A weight other than 1 is written; 1 is the default and left out.
  const std::vector<StoredBackend> weighted{{"http://127.0.0.1:9001", "", 5}, {"http://127.0.0.1:9002", "", 1}};
  save_state_file(path, weighted);
  CHECK(load_state_file(path) == weighted);
  CHECK(read_text(path) ==
        "{\n  \"version\": 1,\n  \"servers\": [\n    {\n      \"url\": \"http://127.0.0.1:9001\",\n      \"weight\": "
        "5\n    },\n    {\n      \"url\": \"http://127.0.0.1:9002\"\n    }\n  ]\n}\n");
}

TEST_CASE("a check is stored compactly whatever its spelling in the file", "[state]") {
  TempDir dir;
  const std::string path = dir.file("state.json");
  write_text(path, R"({"servers": [{"check": { "path" : "/h",  "type": "http" }, "url": "127.0.0.1:9001/"}],
                      "version": 1})");
  const auto loaded = load_state_file(path);
  REQUIRE(loaded.size() == 1);
  CHECK(loaded[0].url == "http://127.0.0.1:9001");  // normalised
  CHECK(loaded[0].check == R"({"path":"/h","type":"http"})");
}

TEST_CASE("a missing state file means no registrations", "[state]") {
  TempDir dir;
  CHECK(load_state_file(dir.file("state.json")).empty());
  CHECK(load_state_file(dir.file("no-such-dir/state.json")).empty());
}

TEST_CASE("a corrupt state file throws StateFileError saying where and what", "[state]") {
  struct Case {
    const char* name;
    std::string text;
    const char* expected;
  };
  const std::vector<Case> cases{
      {"not JSON", "hello", "invalid JSON at offset 0: Invalid value."},
      {"empty file", "", "the file is empty"},
      {"only whitespace", "\n", "invalid JSON at offset 1: The document is empty."},
      {"truncated", R"({"version": 1, "servers": [{"url": "http://127.0.0.1:9001"})",
       "invalid JSON at offset 59: Missing a comma or ']' after an array element."},
      {"missing comma", R"({"version": 1 "servers": []})",
       "invalid JSON at offset 14: Missing a comma or '}' after an object member."},
      {"trailing garbage", R"({"version": 1, "servers": []} x)",
       "invalid JSON at offset 30: The document root must not be followed by other values."},
      {"invalid UTF-8", "{\"version\": 1, \"servers\": [{\"url\": \"\xff\"}]}", "invalid JSON at offset 36"},
      {"top level array", "[]", "expected a JSON object at the top level, got an array"},
      {"version missing", R"({"servers": []})", "missing \"version\""},
      {"wrong version", R"({"version": 2, "servers": []})", "unsupported version 2 (this weldr reads version 1)"},
      {"version as a string", R"({"version": "1", "servers": []})", "unsupported version \"1\""},
      {"servers missing", R"({"version": 1})", "missing \"servers\""},
      {"servers not an array", R"({"version": 1, "servers": {}})", "servers: expected an array, got an object"},
      {"unknown top-level member", R"({"version": 1, "servers": [], "extra": 1})", "unknown member \"extra\""},
      {"duplicate top-level member", R"({"version": 1, "servers": [], "servers": []})",
       "member \"servers\" appears twice"},
      {"server not an object", R"({"version": 1, "servers": ["http://127.0.0.1:9001"]})",
       "servers[0]: expected an object, got a string"},
      {"url missing", R"({"version": 1, "servers": [{"check": {}}]})", "servers[0]: missing \"url\""},
      {"weight zero", R"({"version": 1, "servers": [{"url": "http://127.0.0.1:1", "weight": 0}]})",
       "servers[0].weight: expected an integer from 1 to 256"},
      {"weight not a number", R"({"version": 1, "servers": [{"url": "http://127.0.0.1:1", "weight": "2"}]})",
       "servers[0].weight: expected an integer from 1 to 256"},
      {"url not a string", R"({"version": 1, "servers": [{"url": 9001}]})",
       "servers[0].url: expected a string, got a number"},
      {"invalid URL",
       R"({"version": 1, "servers": [{"url": "http://127.0.0.1:1"}, {"url": "127.0.0.1:2"}, {"url": "ftp://x"}]})",
       "servers[2].url: invalid backend URL \"ftp://x\""},
      {"https", R"({"version": 1, "servers": [{"url": "https://127.0.0.1:443"}]})",
       "servers[0].url: invalid backend URL \"https://127.0.0.1:443\""},
      {"host name", R"({"version": 1, "servers": [{"url": "http://example.com:80"}]})",
       "servers[0].url: invalid backend URL"},
      {"control characters quoted", R"({"version": 1, "servers": [{"url": "a\u0001b"}]})",
       R"(servers[0].url: invalid backend URL "a\u0001b")"},
      {"duplicate backend",
       R"({"version": 1, "servers": [{"url": "http://127.0.0.1:9001"}, {"url": "127.0.0.1:9001"}]})",
       "servers[1].url: \"127.0.0.1:9001\" is the same backend as servers[0] (127.0.0.1:9001)"},
      {"check not an object", R"({"version": 1, "servers": [{"url": "127.0.0.1:9001", "check": "http"}]})",
       "servers[0].check: expected an object, got a string"},
      {"check an array", R"({"version": 1, "servers": [{"url": "127.0.0.1:9001", "check": []}]})",
       "servers[0].check: expected an object, got an array"},
      {"unknown server member", R"({"version": 1, "servers": [{"url": "127.0.0.1:9001", "chek": {}}]})",
       "servers[0]: unknown member \"chek\""},
  };
  TempDir dir;
  const std::string path = dir.file("state.json");
  for (const auto& c : cases) {
    INFO(c.name);
    write_text(path, c.text);
    try {
      load_state_file(path);
      FAIL("no exception");
    } catch (const StateFileError& e) {
      const std::string what = e.what();
      CHECK_THAT(what, Catch::StartsWith("state file " + path + ": "));
      CHECK_THAT(what, Catch::Contains(c.expected));
    }
  }
}

TEST_CASE("a state file path that is not a regular file is an error, not an empty pool", "[state]") {
  TempDir dir;
  const std::string path = dir.file("state.json");
  REQUIRE(std::filesystem::create_directory(path));
  CHECK_THROWS_MATCHES(load_state_file(path), StateFileError,
                       Catch::Message("state file " + path + ": not a regular file"));
}

TEST_CASE("save_state_file leaves the old file intact when it fails", "[state]") {
  TempDir dir;
  const std::string path = dir.file("state.json");
  save_state_file(path, {{"http://127.0.0.1:9001", ""}});
  const std::string before = read_text(path);

  SECTION("the temp file cannot be created") {
    REQUIRE(std::filesystem::create_directory(temp_name(path)));
    CHECK_THROWS_AS(save_state_file(path, {{"http://127.0.0.1:9002", ""}}), std::system_error);
    CHECK(std::filesystem::is_directory(temp_name(path)));  // not ours: left alone
  }
  SECTION("the rename fails") {
    const std::string other = dir.file("other");
    REQUIRE(std::filesystem::create_directory(other));
    CHECK_THROWS_AS(save_state_file(other, {{"http://127.0.0.1:9002", ""}}), std::system_error);
    CHECK(std::filesystem::is_empty(other));
    CHECK_FALSE(std::filesystem::exists(temp_name(other)));  // removed after the failure
  }
  SECTION("a check is not a JSON object") {
    CHECK_THROWS_AS(save_state_file(path, {{"http://127.0.0.1:9002", "[1]"}}), std::invalid_argument);
    CHECK_THROWS_AS(save_state_file(path, {{"http://127.0.0.1:9002", "{"}}), std::invalid_argument);
    CHECK_FALSE(std::filesystem::exists(temp_name(path)));
  }
  SECTION("the directory does not exist") {
    CHECK_THROWS_AS(save_state_file(dir.file("gone/state.json"), {}), std::system_error);
  }
  CHECK(read_text(path) == before);
  CHECK(urls_in(path) == std::vector<std::string>{"http://127.0.0.1:9001"});
}

TEST_CASE("StateFile::start loads the file and then keeps it in step with the pool", "[state]") {
  TempDir dir;
  const std::string path = dir.file("state.json");
  save_state_file(path, {{"http://127.0.0.1:9001", ""}, {"http://127.0.0.1:9002", R"({"type":"tcp"})", 4}});

  Pool pool;
  StateFile state(pool, path);
  CHECK(pool.size() == 0);  // the constructor touches nothing
  state.start();
  CHECK(urls_in(pool) == std::vector<std::string>{"http://127.0.0.1:9001", "http://127.0.0.1:9002"});
  REQUIRE(pool.find("127.0.0.1:9002"));
  CHECK(pool.find("127.0.0.1:9002")->check() == R"({"type":"tcp"})");
  CHECK(pool.find("127.0.0.1:9001")->check().empty());
  CHECK(pool.find("127.0.0.1:9002")->weight() == 4);

  CHECK(pool.add(address("127.0.0.1:9003"), R"({"type":"http","path":"/health"})"));
  CHECK(load_state_file(path) ==
        std::vector<StoredBackend>{{"http://127.0.0.1:9001", ""},
                                   {"http://127.0.0.1:9002", R"({"type":"tcp"})", 4},
                                   {"http://127.0.0.1:9003", R"({"type":"http","path":"/health"})"}});

  CHECK(pool.remove("127.0.0.1:9001"));
  CHECK(urls_in(path) == std::vector<std::string>{"http://127.0.0.1:9002", "http://127.0.0.1:9003"});

  CHECK(pool.add("http://127.0.0.1:9001"));
  CHECK(urls_in(path) ==
        std::vector<std::string>{"http://127.0.0.1:9002", "http://127.0.0.1:9003", "http://127.0.0.1:9001"});

  // A weight change is saved.
  CHECK(pool.set_weight("127.0.0.1:9002", 2));
  CHECK(load_state_file(path)[0].weight == 2);
  CHECK(pool.set_weight("127.0.0.1:9002", 4));

  // Health state is not persisted.
  const std::string before = read_text(path);
  CHECK(pool.set_state("127.0.0.1:9002", weldr::BackendState::down));
  CHECK(read_text(path) == before);
  CHECK(state.last_error().empty());

  // A restart gets the same pool back.
  Pool restarted;
  StateFile again(restarted, path);
  again.start();
  CHECK(urls_in(restarted) == urls_in(pool));
  CHECK(restarted.find("127.0.0.1:9003")->check() == R"({"type":"http","path":"/health"})");
}

TEST_CASE("a removed backend still draining is not in the state file", "[state]") {
  TempDir dir;
  const std::string path = dir.file("state.json");
  Pool pool;
  StateFile state(pool, path);
  state.start();
  CHECK(pool.add("127.0.0.1:9001"));
  CHECK(pool.add("127.0.0.1:9002"));
  auto busy = pool.find("127.0.0.1:9001");
  pool.begin_request(*busy);
  CHECK(pool.remove("127.0.0.1:9001"));
  CHECK(pool.size() == 2);  // still draining
  CHECK(urls_in(path) == std::vector<std::string>{"http://127.0.0.1:9002"});
  pool.end_request(*busy, true);
  CHECK(pool.size() == 1);
  CHECK(urls_in(path) == std::vector<std::string>{"http://127.0.0.1:9002"});
}

TEST_CASE("StateFile::start on a first run writes what the pool already holds", "[state]") {
  TempDir dir;
  const std::string path = dir.file("state.json");
  Pool pool;
  CHECK(pool.add("127.0.0.1:9001"));
  StateFile state(pool, path);
  state.start();
  CHECK(urls_in(path) == std::vector<std::string>{"http://127.0.0.1:9001"});
  CHECK_THROWS_AS(state.start(), std::logic_error);
}

TEST_CASE("StateFile::start refuses a corrupt file and changes nothing", "[state]") {
  TempDir dir;
  const std::string path = dir.file("state.json");
  const std::string text = R"({"version": 1, "servers": [{"url": "127.0.0.1:9001"}, {"url": "ftp://x"}]})";
  write_text(path, text);
  Pool pool;
  StateFile state(pool, path);
  CHECK_THROWS_MATCHES(state.start(), StateFileError,
                       Catch::Message("state file " + path + ": servers[1].url: invalid backend URL \"ftp://x\""));
  CHECK(pool.size() == 0);
  CHECK(read_text(path) == text);
  // Not subscribed: later changes do not write.
  CHECK(pool.add("127.0.0.1:9002"));
  CHECK(read_text(path) == text);
}

TEST_CASE("StateFile::start fails at once when the file cannot be written", "[state]") {
  TempDir dir;
  const std::string path = dir.file("gone/state.json");
  Pool pool;
  StateFile state(pool, path);
  CHECK_THROWS_WITH(state.start(), Catch::StartsWith("state file " + path + ": cannot write: ") &&
                                       Catch::Contains("No such file or directory"));
  CHECK(pool.add("127.0.0.1:9002"));  // not subscribed
  CHECK(state.last_error().empty());
}

TEST_CASE("a failed write is logged and remembered; the pool keeps the change", "[state]") {
  TempDir dir;
  const std::string path = dir.file("state.json");
  Pool pool;
  StateFile state(pool, path);
  state.start();
  CHECK(pool.add("127.0.0.1:9001"));
  const std::string before = read_text(path);

  LogCapture log;
  REQUIRE(std::filesystem::create_directory(temp_name(path)));
  CHECK(pool.add("127.0.0.1:9002"));
  CHECK(pool.size() == 2);
  CHECK_THAT(state.last_error(), Catch::StartsWith("state file " + path + ": cannot save the pool: "));
  CHECK(read_text(path) == before);
  REQUIRE(log.errors().size() == 1);
  CHECK(log.errors()[0] == state.last_error());

  CHECK(pool.remove("127.0.0.1:9001"));  // fails too
  CHECK(pool.size() == 1);
  CHECK(read_text(path) == before);

  std::filesystem::remove(temp_name(path));
  CHECK(pool.add("127.0.0.1:9003"));
  CHECK(state.last_error().empty());
  CHECK(urls_in(path) == std::vector<std::string>{"http://127.0.0.1:9002", "http://127.0.0.1:9003"});
  CHECK(log.errors().size() == 2);
}

TEST_CASE("a StateFile stops writing once destroyed", "[state]") {
  TempDir dir;
  const std::string path = dir.file("state.json");
  Pool pool;
  {
    StateFile state(pool, path);
    state.start();
    CHECK(pool.add("127.0.0.1:9001"));
  }
  CHECK(pool.add("127.0.0.1:9002"));
  CHECK(urls_in(path) == std::vector<std::string>{"http://127.0.0.1:9001"});
}

TEST_CASE("changes from several threads all reach the state file", "[state]") {
  TempDir dir;
  const std::string path = dir.file("state.json");
  Pool pool;
  StateFile state(pool, path);
  state.start();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&pool, t] {
      for (int i = 0; i < 10; ++i) {
        const std::string id = "127.0.0." + std::to_string(t + 1) + ":" + std::to_string(9000 + i);
        pool.add(id);
        if (i % 3 == 0) pool.remove(id);
      }
    });
  }
  for (auto& thread : threads)
    thread.join();
  CHECK(state.last_error().empty());
  CHECK(urls_in(path) == urls_in(pool));
  CHECK(pool.size() == 24);
}
