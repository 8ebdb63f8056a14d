#pragma once
// Byte buffers for connections: a growable buffer with a read and a write position, whose
// storage comes from a per-Proxy free list so that connections can give their buffers back
// while idle without a malloc/free pair per request.

#include <cstddef>
#include <cstring>
#include <memory>
#include <vector>

namespace weldr::net {

/// Free list of equally sized blocks; single-threaded (one per Proxy).
class BufferPool {
 public:
  /// Blocks of `block_size` bytes; at most `max_free` are kept for reuse.
  BufferPool(std::size_t block_size, std::size_t max_free) : block_size_(block_size), max_free_(max_free) {}

  [[nodiscard]] std::size_t block_size() const noexcept { return block_size_; }
  /// A block from the free list, or a new one.
  std::unique_ptr<char[]> get() {
    if (free_.empty()) return std::make_unique_for_overwrite<char[]>(block_size_);  // no memset
    auto block = std::move(free_.back());
    free_.pop_back();
    return block;
  }
  /// Returns a block for reuse (freed if the list is full).
  void put(std::unique_ptr<char[]> block) {
    if (free_.size() < max_free_) free_.push_back(std::move(block));
  }

 private:
  std::size_t block_size_;
  std::size_t max_free_;
  std::vector<std::unique_ptr<char[]>> free_;
};

/// Bytes [begin, end) are readable; [end, capacity) is free space for the next read.
class Buffer {
 public:
  /// A buffer whose storage is taken from `pool` on first use.
  explicit Buffer(BufferPool& pool) : pool_(&pool), capacity_(pool.block_size()) {}
  ~Buffer() { release(); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  /// Start of the storage (offsets of parsed spans are relative to it).
  [[nodiscard]] char* data() noexcept { return data_.get(); }
  [[nodiscard]] const char* data() const noexcept { return data_.get(); }
  /// Offset of the first unread byte.
  [[nodiscard]] std::size_t begin() const noexcept { return begin_; }
  /// Number of unread bytes.
  [[nodiscard]] std::size_t size() const noexcept { return end_ - begin_; }
  /// Pointer to the first unread byte.
  [[nodiscard]] const char* read_ptr() const noexcept { return data_.get() + begin_; }
  /// Free space after the unread bytes; takes storage from the pool on first use.
  [[nodiscard]] char* write_ptr() {
    if (!data_) data_ = pool_->get();
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
    move_to(std::make_unique_for_overwrite<char[]>(capacity), capacity, nullptr);
  }
  /// Moves to a block of `large` (bigger than this buffer's), keeping the unread bytes at the
  /// same offsets; the block goes back to `large` when released.
  void grow_from(BufferPool& large) {
    if (large.block_size() <= capacity_) return;
    move_to(large.get(), large.block_size(), &large);
  }
  /// Gives the storage back when nothing is unread (idle connections hold no buffer).
  void release() noexcept {
    if (size() != 0) return;
    give_back();
    begin_ = end_ = 0;
    capacity_ = pool_->block_size();
  }

 private:
  // Copies the bytes up to end_ into `block` (of `capacity` bytes, from `home` or from the heap)
  // and makes it the storage, giving the old one back.
  void move_to(std::unique_ptr<char[]> block, std::size_t capacity, BufferPool* home) {
    if (data_) std::memcpy(block.get(), data_.get(), end_);
    give_back();
    data_ = std::move(block);
    capacity_ = capacity;
    large_ = home;
  }

  void give_back() noexcept {
    if (!data_) return;
    BufferPool* home = nullptr;
    if (capacity_ == pool_->block_size()) home = pool_;
    if (large_ != nullptr && capacity_ == large_->block_size()) home = large_;
    large_ = nullptr;
    if (home != nullptr) {
      try {
        home->put(std::move(data_));
      } catch (...) {  // the free list could not grow: just free the block
      }
    }
    data_.reset();
  }

  BufferPool* pool_;
  BufferPool* large_{nullptr};  // where the current block came from, when from grow_from()
  std::unique_ptr<char[]> data_;
  std::size_t capacity_;
  std::size_t begin_{0};
  std::size_t end_{0};
};

}  // namespace weldr::net
