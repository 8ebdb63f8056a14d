#pragma once
// A growable byte buffer with a read and a write position, reused across messages.

#include <cstddef>
#include <cstring>
#include <memory>

namespace weldr::net {

/// Bytes [begin, end) are readable; [end, capacity) is free space for the next read.
class Buffer {
 public:
  explicit Buffer(std::size_t capacity) : capacity_(capacity) {}

  /// Start of the storage (offsets of parsed spans are relative to it).
  [[nodiscard]] char* data() noexcept { return data_.get(); }
  [[nodiscard]] const char* data() const noexcept { return data_.get(); }
  /// Offset of the first unread byte.
  [[nodiscard]] std::size_t begin() const noexcept { return begin_; }
  /// Number of unread bytes.
  [[nodiscard]] std::size_t size() const noexcept { return end_ - begin_; }
  /// Pointer to the first unread byte.
  [[nodiscard]] const char* read_ptr() const noexcept { return data_.get() + begin_; }
  /// Free space after the unread bytes; allocates the storage on first use.
  [[nodiscard]] char* write_ptr() {
    if (!data_) data_ = std::make_unique<char[]>(capacity_);
    return data_.get() + end_;
  }
  /// Bytes that write_ptr() may receive.
  [[nodiscard]] std::size_t writable() const noexcept { return capacity_ - end_; }
  [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }

  /// Marks `n` bytes after write_ptr() as received.
  void commit(std::size_t n) noexcept { end_ += n; }
  /// Marks `n` unread bytes as used; resets to the start when empty.
  void consume(std::size_t n) noexcept {
    begin_ += n;
    if (begin_ == end_) begin_ = end_ = 0;
  }
  /// Drops every unread byte.
  void clear() noexcept { begin_ = end_ = 0; }
  /// Moves the unread bytes to the start of the storage.
  void compact() noexcept {
    if (begin_ == 0) return;
    if (size() > 0) std::memmove(data_.get(), data_.get() + begin_, size());
    end_ -= begin_;
    begin_ = 0;
  }
  /// Grows the storage to `capacity` bytes, keeping the unread bytes at the same offsets.
  void grow(std::size_t capacity) {
    if (capacity <= capacity_) return;
    auto bigger = std::make_unique<char[]>(capacity);
    if (data_) std::memcpy(bigger.get(), data_.get(), end_);
    data_ = std::move(bigger);
    capacity_ = capacity;
  }
  /// Frees the storage when nothing is unread (idle connections keep no buffer).
  void release(std::size_t capacity) noexcept {
    if (size() != 0) return;
    data_.reset();
    begin_ = end_ = 0;
    capacity_ = capacity;
  }

 private:
  std::unique_ptr<char[]> data_;
  std::size_t capacity_;
  std::size_t begin_{0};
  std::size_t end_{0};
};

}  // namespace weldr::net
