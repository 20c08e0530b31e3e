// Peak device memory of libtorch's CUDA caching allocator, for result rows.
//
// tch has no binding for `torch.cuda.max_memory_allocated`, so this shim reads the
// allocator's statistics the way PyTorch does (`c10::cuda::CUDACachingAllocator::
// getDeviceStats(device).allocated_bytes[AGGREGATE].peak`). It does not link against
// libc10_cuda: the caller passes the address of the allocator slot
// (`c10::cuda::CUDACachingAllocator::allocator`), found with `dlsym` once CUDA is loaded,
// so CPU-only machines never need the symbol. Calls go through the allocator's vtable, whose
// layout comes from the libtorch headers this is compiled against (the pinned 2.11.0).
#include <c10/cuda/CUDACachingAllocator.h>

#include <atomic>
#include <cstdint>

namespace {
using Slot = std::atomic<c10::cuda::CUDACachingAllocator::CUDAAllocator*>;

c10::cuda::CUDACachingAllocator::CUDAAllocator* allocator_of(void* slot) {
  if (slot == nullptr) {
    return nullptr;
  }
  auto* a = static_cast<Slot*>(slot)->load();
  if (a == nullptr || !a->initialized()) {
    return nullptr;
  }
  return a;
}
}  // namespace

extern "C" {

// Peak bytes allocated on `device` since the last reset, or -1 when unknown.
int64_t kvcat_cuda_peak_allocated_bytes(void* slot, int device) {
  try {
    auto* a = allocator_of(slot);
    if (a == nullptr) {
      return -1;
    }
    auto stats = a->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    return stats.allocated_bytes[static_cast<size_t>(
                                     c10::CachingAllocator::StatType::AGGREGATE)]
        .peak;
  } catch (...) {
    return -1;
  }
}

// Resets the peak statistics of `device`; 0 on success, -1 otherwise.
int kvcat_cuda_reset_peak(void* slot, int device) {
  try {
    auto* a = allocator_of(slot);
    if (a == nullptr) {
      return -1;
    }
    a->resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 0;
  } catch (...) {
    return -1;
  }
}
}
