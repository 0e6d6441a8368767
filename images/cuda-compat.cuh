// Pre-included into every CUDA compile of images/cuda.Dockerfile (nvcc --pre-include) when the toolkit is
// older than 12.0: Debian's nvidia-cuda-toolkit is 11.8.
//
// llama.cpp enables programmatic dependent launch (PDL) from CUDA 11.8 (ggml-cuda/common.cuh,
// GGML_CUDA_USE_PDL): the host side (cudaLaunchKernelEx and cudaLaunchAttributeProgrammaticStreamSerialization)
// is in 11.8's runtime, but its two device functions were first declared in CUDA 12.0's runtime headers,
// so with 11.8 every .cu file fails: 'identifier "cudaGridDependencySynchronize" is undefined'. CUDA 12
// defines them as one PTX instruction each (griddepcontrol, PTX ISA 7.8, sm_90: which 11.8's nvcc emits);
// these are the same definitions, for 11.x only. llama.cpp calls them only where __CUDA_ARCH__ >= 900.
#pragma once
#include <cuda_runtime.h>

#if defined(CUDART_VERSION) && CUDART_VERSION < 12000
static __device__ __forceinline__ void cudaGridDependencySynchronize(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

static __device__ __forceinline__ void cudaTriggerProgrammaticLaunchCompletion(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}
#endif
