// Stand-in for nvcc's crt/host_defines.h, which the CUDA runtime wheel's cuda_runtime.h
// includes but does not ship. For host-only C++ (csrc/cuda_memory.cpp, which declares no
// kernels) these are attribute macros only. build.rs puts this folder after the real CUDA
// include folder, so a full CUDA toolkit's own header wins.
#pragma once
#define __host__
#define __device__
#define __global__
#define __shared__
#define __constant__
#define __managed__
#define __device_builtin__
#define __device_builtin_texture_type__
#define __device_builtin_surface_type__
#define __cudart_builtin__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __builtin_align__(a) __align__(a)
#define __CUDA_ALIGN__(n) __align__(n)
#define __thread__ __thread
#define __import__
#define __export__
#define __cdecl
#define __annotate__(a) __attribute__((a))
#define __location__(a) __annotate__(a)
#define __specialization_static
#define __no_return__ __attribute__((noreturn))
#define __inline_hint__
#define CUDARTAPI
#define CUDARTAPI_CDECL
#define __dv(v) = v
#define __CUDACC_VER_MAJOR__ 13
