// The chunked decoder: http::Parser's body events for Transfer-Encoding: chunked.
//
// Two uses of each input:
//  1. Generated: the input is read as a recipe for a valid chunked body (chunk sizes, data,
//     hex case, leading zeros, chunk extensions, trailer fields), which follows a request head
//     and a response head and is followed by another message. The decoded body must be exactly
//     the chunks' data, the message must end exactly after the last CRLF and the next message
//     must parse from there, whatever the reads (all at once, one byte per read, random reads
//     into a moving buffer).
//  2. Raw: the input is the body bytes after a chunked request head. All three ways of reading
//     must agree; a body the parser accepts decodes to no more bytes than it used, and
//     re-chunked as one chunk it decodes to the same bytes.

#include "fuzz_common.hpp"

namespace {

using fuzz::escaped;
using fuzz::Message;
using Kind = weldr::http::Parser::Kind;

class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  bool more() const { return pos_ < size_; }
  std::uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_{0};
};

std::string hex(std::size_t value, bool upper, unsigned zeros) {
  static constexpr char kLower[] = "0123456789abcdef";
  static constexpr char kUpper[] = "0123456789ABCDEF";
  std::string out;
  do {
    out.insert(out.begin(), (upper ? kUpper : kLower)[value & 15]);
    value >>= 4;
  } while (value != 0);
  return std::string(zeros, '0') + out;
}

// Chunk extensions (RFC 9112 §7.1.1). Valid, but refused by llhttp 8.1.0 and so left out here
// (see README.md): a second extension after a token value (";a=1;b": "Invalid character in
// chunk size") and a quoted-pair in a quoted value (";q=\"a\\\"b\"").
std::string extension(std::uint8_t bits) {
  switch (bits & 3) {
    case 1: return ";ext";
    case 2: return ";a;name=value";
    case 3: return ";q=\"a;b c\";d";
    default: return "";
  }
}

// A valid chunked body built from the input, and the data it carries.
void generate(const std::uint8_t* data, std::size_t size, std::string& encoded, std::string& decoded) {
  Reader in(data, size);
  fuzz::Rng fill(fuzz::hash(data, size));
  // A few KiB of data at most: the stream is read one byte at a time, and copied at each of
  // the random reads.
  for (int chunk = 0; chunk < 64 && in.more() && decoded.size() < 2048; ++chunk) {
    const std::uint8_t op = in.byte();
    if (op == 0) break;
    std::size_t length = 1 + in.byte();
    if ((op & 0x80) != 0) length = 1 + ((std::size_t{in.byte()} << 8 | in.byte()) % 1500);
    encoded += hex(length, (op & 0x40) != 0, (op >> 4) & 3) + extension(op >> 2) + "\r\n";
    std::string bytes;
    for (std::size_t i = 0; i < length; ++i) {
      // Input bytes while there are (CR, LF, "0\r\n\r\n" inside data included), then filler.
      bytes.push_back(static_cast<char>(in.more() && (op & 1) != 0 ? in.byte() : fill.next()));
    }
    encoded += bytes + "\r\n";
    decoded += bytes;
  }
  const std::uint8_t last = in.byte();
  encoded += std::string(last & 3, '0') + "0" + extension(last >> 2) + "\r\n";
  for (unsigned i = 0; i < ((last >> 4) & 3); ++i)
    encoded += "X-Trailer-" + std::to_string(i) + ": v" + std::to_string(i) + "\r\n";
  encoded += "\r\n";
}

void check_generated(const std::uint8_t* data, std::size_t size, Kind kind) {
  std::string encoded;
  std::string decoded;
  generate(data, size, encoded, decoded);
  const std::string head = kind == Kind::request
                               ? "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                               : "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
  const std::string next =
      kind == Kind::request ? "GET /next HTTP/1.1\r\nHost: a\r\n\r\n" : "HTTP/1.1 204 No Content\r\n\r\n";
  const std::string stream = head + encoded + next;
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(stream.data());

  fuzz::StreamOptions opt;
  opt.kind = kind;
  opt.max_head = 4096;
  opt.max_fields = 32;
  opt.max_messages = 2;
  const fuzz::Splitter splits[] = {{fuzz::Splitter::Mode::whole},
                                   {fuzz::Splitter::Mode::bytewise},
                                   {fuzz::Splitter::Mode::random, fuzz::Rng(fuzz::hash(data, size) ^ 0x5a5a)}};
  for (const auto& split : splits) {
    // One byte per read costs a feed() per byte: for long streams the random reads (mostly
    // 1 to 16 bytes) split at enough places.
    if (split.mode == fuzz::Splitter::Mode::bytewise && stream.size() > 1024) continue;
    fuzz::StreamOptions o = opt;
    o.relocate = split.mode == fuzz::Splitter::Mode::random;
    const auto got = fuzz::parse_stream(bytes, stream.size(), split, o);
    auto what = [&] {
      return std::string(std::string(kind == Kind::request ? "request" : "response") + ", reads " +
                         std::to_string(static_cast<int>(split.mode)) + ", body '" + escaped(encoded) + "'");
    };
    FUZZ_CHECK(got.size() == 2, "a valid chunked body was not accepted: " + what() +
                                    (got.empty() ? std::string() : "\n     " + fuzz::describe(got[0])));
    const Message& m = got[0];
    FUZZ_CHECK(m.complete && !m.error && !m.by_eof && m.head.chunked, fuzz::describe(m) + ": " + what());
    FUZZ_CHECK(m.end == head.size() + encoded.size(), "the message ends at " + std::to_string(m.end) + ", expected " +
                                                          std::to_string(head.size() + encoded.size()) + ": " + what());
    FUZZ_CHECK(m.body == decoded, "decoded '" + escaped(m.body) + "', expected '" + escaped(decoded) + "': " + what());
    const Message& n = got[1];
    FUZZ_CHECK(n.head_done && !n.error && n.complete && n.end == stream.size(),
               "the next message does not follow: " + fuzz::describe(n) + ": " + what());
    if (kind == Kind::request) {
      FUZZ_CHECK(n.target == "/next", "next target '" + escaped(n.target) + "': " + what());
    } else {
      FUZZ_CHECK(n.head.status == 204, "next status " + std::to_string(n.head.status) + ": " + what());
    }
  }
}

void check_raw(const std::uint8_t* data, std::size_t size) {
  const std::string head = "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
  std::string stream = head;
  stream.append(reinterpret_cast<const char*>(data), size);
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(stream.data());
  fuzz::StreamOptions opt;
  opt.max_head = 4096;
  opt.max_fields = 32;
  opt.max_messages = 2;
  const auto whole = fuzz::parse_stream(bytes, stream.size(), {fuzz::Splitter::Mode::whole}, opt);
  const auto bytewise = fuzz::parse_stream(bytes, stream.size(), {fuzz::Splitter::Mode::bytewise}, opt);
  fuzz::check_same(whole, bytewise, "raw chunked body: all at once vs one byte per read");
  fuzz::StreamOptions moved = opt;
  moved.relocate = true;
  const auto random = fuzz::parse_stream(bytes, stream.size(),
                                         {fuzz::Splitter::Mode::random, fuzz::Rng(fuzz::hash(data, size))}, moved);
  fuzz::check_same(whole, random, "raw chunked body: all at once vs random reads");

  FUZZ_CHECK(!whole.empty() && whole[0].head_done && whole[0].head.chunked, "the fixed head did not parse");
  const Message& m = whole[0];
  if (!m.complete || m.error) return;
  FUZZ_CHECK(m.body.size() <= m.end - m.head_end, "decoded more bytes than the chunked body had");

  // Re-chunked as one chunk, the body decodes to the same bytes.
  std::string again = head;
  if (!m.body.empty()) again += hex(m.body.size(), false, 0) + "\r\n" + m.body + "\r\n";
  again += "0\r\n\r\n";
  const auto re = fuzz::parse_stream(reinterpret_cast<const std::uint8_t*>(again.data()), again.size(),
                                     {fuzz::Splitter::Mode::whole}, opt);
  FUZZ_CHECK(re.size() == 1 && re[0].complete && !re[0].error && re[0].end == again.size() && re[0].body == m.body,
             "re-chunked body decodes differently: '" + escaped(again) + "'");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  check_generated(data, size, Kind::request);
  check_generated(data, size, Kind::response);
  check_raw(data, size);
  return 0;
}
