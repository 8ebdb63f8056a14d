#include "net/frame_pool.hpp"

#include <new>

namespace weldr::net {

namespace {

struct FreeFrame {
  FreeFrame* next;
};

// Trivially destructible and zero-initialised, so that reaching it needs no TLS guard, and it
// stays usable for frames freed while the thread exits (they then go back to the heap).
struct FreeLists {
  FreeFrame* head[FramePool::kClasses];
  std::size_t count[FramePool::kClasses];
  bool registered;  // the Reaper below will empty these lists at thread exit
  bool closed;      // it has: free frames directly
};
thread_local FreeLists t_lists;

struct Reaper {
  Reaper() noexcept { t_lists.registered = true; }
  ~Reaper() {
    t_lists.closed = true;
    for (std::size_t c = 0; c < FramePool::kClasses; ++c) {
      while (FreeFrame* frame = t_lists.head[c]) {
        t_lists.head[c] = frame->next;
        ::operator delete(frame);
      }
      t_lists.count[c] = 0;
    }
  }
};
thread_local Reaper t_reaper;

constexpr std::size_t class_of(std::size_t size) noexcept {
  return (size - 1) / FramePool::kGranule;
}

}  // namespace

void* FramePool::allocate(std::size_t size) {
  const std::size_t c = class_of(size);
  if (c >= kClasses) return ::operator new(size);
  if (FreeFrame* frame = t_lists.head[c]) {
    t_lists.head[c] = frame->next;
    --t_lists.count[c];
    return frame;
  }
  return ::operator new((c + 1) * kGranule);
}

void FramePool::deallocate(void* frame, std::size_t size) noexcept {
  const std::size_t c = class_of(size);
  if (c >= kClasses || t_lists.closed || t_lists.count[c] >= kMaxFree) {
    ::operator delete(frame);
    return;
  }
  if (!t_lists.registered) static_cast<void>(&t_reaper);  // first use constructs it
  auto* node = static_cast<FreeFrame*>(frame);
  node->next = t_lists.head[c];
  t_lists.head[c] = node;
  ++t_lists.count[c];
}

std::size_t FramePool::free_frames() noexcept {
  std::size_t n = 0;
  for (std::size_t c = 0; c < kClasses; ++c)
    n += t_lists.count[c];
  return n;
}

}  // namespace weldr::net
