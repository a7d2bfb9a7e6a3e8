// Cooperative fibers for the CUDA emulation: every CUDA thread of a block is a fiber (its own
// stack), all of a block's fibers run on one OS thread, and a fiber gives up the OS thread only
// where a CUDA thread waits for others (a barrier or a warp collective). Switching costs a few
// nanoseconds, so warp-synchronous code (mma.sync, ldmatrix, shuffles: a rendezvous of 32
// lanes each) runs at the speed of its arithmetic, where one OS thread per CUDA thread would
// pay a kernel round trip per rendezvous.
//
// Order of execution: the lanes of a warp run round-robin up to each collective; a warp runs
// until all its lanes wait on a block barrier (or exit) before the next warp gets the OS
// thread; the warp that completes a block barrier continues first. Warps are thus as far
// apart as barriers allow, in both orders, which is what lets a missing __syncthreads() show.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace cuda_emulation::fibers {

// ---------------------------------------------------------------------------------------
// Stack switching.

#if defined(__x86_64__)
// Saves the System V callee-saved registers and the SSE/x87 control words on the current stack,
// stores the stack pointer in *save, continues on the stack `load` that was saved the same way.
__attribute__((naked, noinline)) inline void switch_stack(void** /*save*/, void* /*load*/) {
  asm volatile(
      "pushq %rbp\n\t"
      "pushq %rbx\n\t"
      "pushq %r12\n\t"
      "pushq %r13\n\t"
      "pushq %r14\n\t"
      "pushq %r15\n\t"
      "subq $16, %rsp\n\t"
      "stmxcsr (%rsp)\n\t"
      "fnstcw 8(%rsp)\n\t"
      "movq %rsp, (%rdi)\n\t"
      "movq %rsi, %rsp\n\t"
      "ldmxcsr (%rsp)\n\t"
      "fldcw 8(%rsp)\n\t"
      "addq $16, %rsp\n\t"
      "popq %r15\n\t"
      "popq %r14\n\t"
      "popq %r13\n\t"
      "popq %r12\n\t"
      "popq %rbx\n\t"
      "popq %rbp\n\t"
      "ret\n\t");
}

// A stack whose first switch_stack() enters entry(): the frame switch_stack pops, with entry
// as the return address, placed so that entry starts with the alignment of a called function.
inline void* prepare_stack(unsigned char* top, void (*entry)()) {
  uint32_t mxcsr = 0;
  uint16_t fpu_control = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpu_control));
  auto* frame = reinterpret_cast<uint64_t*>(top) - 10;  // 16-byte aligned: 80 bytes below the top
  std::memset(frame, 0, 10 * sizeof(uint64_t));
  std::memcpy(&frame[0], &mxcsr, sizeof(mxcsr));
  std::memcpy(&frame[1], &fpu_control, sizeof(fpu_control));
  frame[8] = reinterpret_cast<uint64_t>(entry);  // after 2 control-word slots and 6 registers
  return frame;
}
#endif

// ---------------------------------------------------------------------------------------
// A fiber's stack: mmap'd (pages are touched only as used), with a guard page below it so an
// overflow faults instead of corrupting a neighbour.

class Stack {
 public:
  static constexpr size_t kBytes = 512 * 1024;

  Stack() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* memory = mmap(nullptr, kBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) std::abort();
    mprotect(memory, page, PROT_NONE);
    base_ = static_cast<unsigned char*>(memory);
    size_ = kBytes + page;
  }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  ~Stack() { munmap(base_, size_); }

  unsigned char* top() const { return base_ + size_; }
  unsigned char* bottom() const { return base_ + size_ - kBytes; }

 private:
  unsigned char* base_ = nullptr;
  size_t size_ = 0;
};

// Stacks outlive launches: mapping and unmapping them per block would cost more than running it.
class StackPool {
 public:
  static StackPool& instance() {
    static StackPool* pool = new StackPool();  // never destroyed: worker threads may outlive statics
    return *pool;
  }

  Stack* acquire() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.empty()) return new Stack();
    Stack* stack = free_.back();
    free_.pop_back();
    return stack;
  }

  void release(Stack* stack) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.push_back(stack);
  }

 private:
  std::mutex mutex_;
  std::vector<Stack*> free_;
};

// ---------------------------------------------------------------------------------------
// A barrier among fibers of one scheduler. The last to arrive runs the completion (a warp
// collective's data exchange) before anyone is released.

struct Barrier {
  int expected = 0;
  int arrived = 0;
  uint64_t generation = 0;
};

struct Fiber {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t context{};
#endif
  int warp = 0;
  bool done = false;
  const Barrier* waiting_on = nullptr;
  uint64_t wait_generation = 0;

  bool runnable() const { return !done && (waiting_on == nullptr || waiting_on->generation != wait_generation); }
};

// Runs `count` fibers, grouped in warps of `warp_size`, each executing body(index) once.
class Scheduler {
 public:
  using Body = void (*)(void* context, int fiber);

  // Runs every fiber to its end. Returns false on a deadlock: every fiber still alive waits on
  // a barrier that cannot complete (a __syncthreads() some threads skip, or a collective some
  // lanes never reach). The fibers left waiting are abandoned; their stacks are reused.
  bool run(int count, int warp_size, Body body, void* context) {
    while (static_cast<int>(stacks_.size()) < count) stacks_.push_back(StackPool::instance().acquire());
    fibers_.assign(count, Fiber{});
    body_ = body;
    context_ = context;
    warp_size_ = warp_size;
    alive_ = count;
    deadlock_ = false;
    for (int i = 0; i < count; ++i) {
      fibers_[i].warp = i / warp_size;
      prepare(i);
    }
    current_ = 0;
    active() = this;
    enter(0);
    active() = nullptr;
    return !deadlock_;
  }

  // The fiber running now.
  int current() const { return current_; }

  // Arrive at `barrier`; the last to arrive runs completion() and continues, the others wait.
  template <typename Completion>
  void arrive_and_wait(Barrier& barrier, const Completion& completion) {
    if (++barrier.arrived == barrier.expected) {
      completion();
      barrier.arrived = 0;
      ++barrier.generation;
      return;
    }
    Fiber& self = fibers_[current_];
    self.waiting_on = &barrier;
    self.wait_generation = barrier.generation;
    switch_away();
    self.waiting_on = nullptr;
  }

  static Scheduler*& active() {
    static thread_local Scheduler* scheduler = nullptr;
    return scheduler;
  }

  ~Scheduler() {
    for (Stack* stack : stacks_) StackPool::instance().release(stack);
  }

 private:
  static void entry() {
    Scheduler& s = *active();
    s.body_(s.context_, s.current_);
    s.fibers_[s.current_].done = true;
    --s.alive_;
    s.switch_away();  // never resumes
    std::abort();
  }

  void prepare(int i) {
#if defined(__x86_64__)
    fibers_[i].sp = prepare_stack(stacks_[i]->top(), &Scheduler::entry);
#else
    ucontext_t& context = fibers_[i].context;
    getcontext(&context);
    context.uc_stack.ss_sp = stacks_[i]->bottom();
    context.uc_stack.ss_size = Stack::kBytes;
    context.uc_link = nullptr;
    makecontext(&context, &Scheduler::entry, 0);
#endif
  }

  void enter(int i) {
#if defined(__x86_64__)
    switch_stack(&main_sp_, fibers_[i].sp);
#else
    swapcontext(&main_context_, &fibers_[i].context);
#endif
  }

  // The next fiber to run after the current one: a runnable lane of the same warp, else of the
  // following warps; -1 if none.
  int next_runnable() const {
    const int count = static_cast<int>(fibers_.size());
    const int warp_first = fibers_[current_].warp * warp_size_;
    const int warp_end = warp_first + warp_size_ < count ? warp_first + warp_size_ : count;
    for (int i = current_ + 1; i < warp_end; ++i) {
      if (fibers_[i].runnable()) return i;
    }
    for (int i = warp_first; i <= current_; ++i) {
      if (fibers_[i].runnable()) return i;
    }
    for (int step = 1; step <= count; ++step) {
      const int i = (warp_end - 1 + step) % count;
      if (fibers_[i].runnable()) return i;
    }
    return -1;
  }

  // Leaves the current fiber for the next runnable one, or for the launching stack when none is
  // left (all done, or a deadlock).
  void switch_away() {
    const int from = current_;
    const int next = next_runnable();
    if (next == from) return;
    if (next < 0) {
      deadlock_ = alive_ > 0;
#if defined(__x86_64__)
      void* ignored = nullptr;
      switch_stack(fibers_[from].done ? &ignored : &fibers_[from].sp, main_sp_);
#else
      swapcontext(&fibers_[from].context, &main_context_);
#endif
      return;
    }
    current_ = next;
#if defined(__x86_64__)
    void* ignored = nullptr;
    switch_stack(fibers_[from].done ? &ignored : &fibers_[from].sp, fibers_[next].sp);
#else
    swapcontext(&fibers_[from].context, &fibers_[next].context);
#endif
  }

  std::vector<Stack*> stacks_;
  std::vector<Fiber> fibers_;
  Body body_ = nullptr;
  void* context_ = nullptr;
  int warp_size_ = 32;
  int current_ = 0;
  int alive_ = 0;
  bool deadlock_ = false;
#if defined(__x86_64__)
  void* main_sp_ = nullptr;
#else
  ucontext_t main_context_{};
#endif
};

}  // namespace cuda_emulation::fibers
