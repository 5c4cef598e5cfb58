// Winograd F(4x4, 3x3) convolutions of VDSR on x86-64 CPUs with AVX-512 or
// AVX2 + FMA, as XLA FFI handlers (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", CVPR 2016).
//
// A 3x3 'SAME' convolution of a 4x4 output tile needs 16*9 = 144 multiplies
// per channel pair done directly, and 36 in Winograd's transformed space:
// every 6x6 input tile d is transformed to V = B^T d B, multiplied
// elementwise by the transformed kernel U = G w G^T (summed over input
// channels: 36 small GEMMs), and transformed back, Y = A^T M A. VDSR's
// 64 -> 64 layers already run at this CPU's float32 GEMM speed with direct
// convolutions (oneDNN, dnnl_conv.cc), so fewer multiplies is the only way
// to make them faster in float32. The transforms are done block by block
// (kBlockTiles tiles at a time, in cache), never materialised for the whole
// image, which is what made the jnp version (vdsr_jax/conv.py, 'winograd4')
// memory-bound and slow.
//
//   VdsrWinogradFwd(x[N,H,W,C], w[3,3,C,K], b[K]; relu) -> y[N,H,W,K]
//     y = conv(x, w) + b, then ReLU if `relu`.
//   VdsrWinogradFwdMasked(x, w, b, mask[M,H,W,1]; relu) -> y[N,H,W,K]
//     the same times mask (per pixel; M = 1 or N): the zeroed padding of
//     bucketed inference (vdsr_jax/inference.py) without a separate pass
//     over the output.
//   VdsrWinogradBwdData(dy[N,H,W,K], w[3,3,C,K]) -> dx[N,H,W,C]
//     the same forward kernel on dy with w rotated by 180 degrees and its
//     channel axes swapped.
//   VdsrWinogradBwdWeights(x[N,H,W,C], dy[N,H,W,K]) -> dw[3,3,C,K]
//     dw = G^T du G, du[xi] = sum over tiles of (B^T x B)[xi] (A dy A^T)[xi]
//     (the gradient with respect to the transformed kernel).
// The kernel transforms are done here too, so that XLA sees one custom call
// per convolution, as with the oneDNN kernels (computing them in XLA let
// its scheduler keep all 18 transformed kernels, and at 1080p one more
// activation, alive at once).
//
// The SIMD code is winograd_kernels.inc, compiled twice below: for AVX-512
// and for AVX2 + FMA. The handlers run the AVX-512 copy where the CPU has
// it, else the AVX2 one (VdsrWinogradUseIsa picks one for tests and
// benchmarks); the results differ only in rounding.
//
// float32, NHWC / position-major layouts, C and K multiples of 16, stride 1,
// zero padding 1. Threads: OpenMP over tile blocks; no state between calls
// but the instruction set the handlers run.

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// Everything outside the two `#pragma GCC target` regions is plain x86-64
// code, so the library loads on any x86-64 CPU; VdsrWinogradIsa() says
// whether (and which) kernels may be called.
namespace {

constexpr int kM = 4;            // output tile size
constexpr int kAlpha = 6;        // input tile size, kM + 3 - 1
constexpr int kPos = 36;         // kAlpha^2 transformed positions
constexpr int kRows = 6;         // tiles (or channels) per GEMM micro-tile
constexpr int kBlockTiles = 48;  // tiles per block: a multiple of kRows

// Floats between two transformed positions of a block buffer holding
// `channels` values per tile: one cache line more than the data, so the 36
// positions of a tile, read or written together by the transforms, fall in
// different L1 sets (a multiple of 4 KiB would put them all in one).
inline int64_t PositionStride(int64_t channels) {
  return kBlockTiles * channels + 16;
}

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<float[], FreeDeleter>;

// 64-byte aligned floats; null if the memory is not there.
Buffer Allocate(int64_t floats) {
  const size_t bytes =
      ((static_cast<size_t>(std::max<int64_t>(floats, 1)) * 4 + 63) / 64) * 64;
  return Buffer(static_cast<float*>(std::aligned_alloc(64, bytes)));
}

ffi::Error OutOfMemory() {
  return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                    "vdsr winograd conv: out of host memory for the "
                    "convolution's work buffers");
}

// The tiling of an (N, H, W, *) activation into 4x4 output tiles.
struct Tiling {
  int64_t n, h, w, ty, tx, tiles;
  Tiling(int64_t n_, int64_t h_, int64_t w_)
      : n(n_), h(h_), w(w_), ty((h_ + kM - 1) / kM), tx((w_ + kM - 1) / kM),
        tiles(n_ * ty * tx) {}
  void Locate(int64_t t, int64_t* b, int64_t* i, int64_t* j) const {
    *j = t % tx;
    *i = (t / tx) % ty;
    *b = t / (tx * ty);
  }
};

// Per-pixel factors multiplied into a convolution's output: planes
// (batch, H, W), batch 1 (one plane for every image) or N; none if null.
struct PixelMask {
  const float* data = nullptr;
  int64_t batch = 1;
  const float* Plane(int64_t b, const Tiling& g) const {
    return data == nullptr ? nullptr
                           : data + (batch == 1 ? 0 : b) * g.h * g.w;
  }
};

// G of F(4x4, 3x3): U = G w G^T.
constexpr float kG[6][3] = {{1.f / 4, 0.f, 0.f},
                            {-1.f / 6, -1.f / 6, -1.f / 6},
                            {-1.f / 6, 1.f / 6, -1.f / 6},
                            {1.f / 24, 1.f / 12, 1.f / 6},
                            {1.f / 24, -1.f / 12, 1.f / 6},
                            {0.f, 0.f, 1.f}};

// The kernel of the input gradient, w'[i][j][ko][ci] = w[2-i][2-j][ci][ko].
void FlipKernel(const float* w, int64_t c, int64_t k, float* out) {
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      const float* src = w + ((2 - i) * 3 + (2 - j)) * c * k;
      float* dst = out + (i * 3 + j) * k * c;
      for (int64_t ci = 0; ci < c; ++ci) {
        for (int64_t ko = 0; ko < k; ++ko) dst[ko * c + ci] = src[ci * k + ko];
      }
    }
  }
}

// The SIMD kernels, once per instruction set.
#pragma GCC push_options
#pragma GCC target("avx512f,fma")
namespace avx512 {
#define VDSR_WINOGRAD_AVX512
#include "winograd_kernels.inc"
#undef VDSR_WINOGRAD_AVX512
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "winograd_kernels.inc"
}  // namespace avx2
#pragma GCC pop_options

// One instruction set's entry points.
struct Kernels {
  int vector_bits;
  void (*transform_kernel)(const float* w, int64_t c, int64_t k, float* u);
  ffi::Error (*convolve)(const float* x, const Tiling& g, int64_t c,
                         const float* u, int64_t k, const float* bias,
                         bool relu, const PixelMask& mask, float* y);
  ffi::Error (*weight_grad)(const float* x, const float* dy, const Tiling& g,
                            int64_t c, int64_t k, float* dw);
};

constexpr Kernels kAvx512 = {512, avx512::TransformKernel, avx512::Convolve,
                             avx512::WeightGrad};
constexpr Kernels kAvx2 = {256, avx2::TransformKernel, avx2::Convolve,
                           avx2::WeightGrad};

bool CpuHas(int vector_bits) {
  __builtin_cpu_init();
  if (vector_bits == 512) return __builtin_cpu_supports("avx512f");
  if (vector_bits == 256) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
  return false;
}

// The kernels the handlers run: the widest this CPU has; null if neither.
const Kernels*& Selected() {
  static const Kernels* selected =
      CpuHas(512) ? &kAvx512 : CpuHas(256) ? &kAvx2 : nullptr;
  return selected;
}

ffi::Error Unsupported() {
  return ffi::Error(ffi::ErrorCode::kUnimplemented,
                    "vdsr winograd conv: this CPU has neither AVX-512F nor "
                    "AVX2 + FMA");
}

ffi::Error ForwardWithMask(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                           ffi::Buffer<ffi::F32> bias, const PixelMask& mask,
                           bool relu, ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions(), bd = bias.dimensions(),
             yd = y->dimensions();
  if (xd.size() != 4 || wd.size() != 4 || bd.size() != 1 || yd.size() != 4 ||
      wd[0] != 3 || wd[1] != 3 || wd[2] != xd[3] || bd[0] != wd[3] ||
      yd[0] != xd[0] || yd[1] != xd[1] || yd[2] != xd[2] || yd[3] != wd[3] ||
      xd[3] % 16 != 0 || wd[3] % 16 != 0) {
    return ffi::Error::InvalidArgument(
        "vdsr winograd conv: expected x (N, H, W, C), w (3, 3, C, K), bias "
        "(K,) and y (N, H, W, K) with C and K multiples of 16");
  }
  const int64_t c = xd[3], k = wd[3];
  Buffer u = Allocate(kPos * c * k);
  if (!u) return OutOfMemory();
  const Kernels* isa = Selected();
  if (isa == nullptr) return Unsupported();
  isa->transform_kernel(w.typed_data(), c, k, u.get());
  return isa->convolve(x.typed_data(), Tiling(xd[0], xd[1], xd[2]), c,
                       u.get(), k, bias.typed_data(), relu, mask,
                       y->typed_data());
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::Buffer<ffi::F32> bias, bool relu,
                   ffi::ResultBuffer<ffi::F32> y) {
  return ForwardWithMask(x, w, bias, PixelMask(), relu, y);
}

ffi::Error ForwardMasked(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                         ffi::Buffer<ffi::F32> bias,
                         ffi::Buffer<ffi::F32> mask, bool relu,
                         ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), md = mask.dimensions();
  if (xd.size() != 4 || md.size() != 4 || (md[0] != 1 && md[0] != xd[0]) ||
      md[1] != xd[1] || md[2] != xd[2] || md[3] != 1) {
    return ffi::Error::InvalidArgument(
        "vdsr winograd conv: expected a mask (1 or N, H, W, 1) for x "
        "(N, H, W, C)");
  }
  PixelMask pixel_mask;
  pixel_mask.data = mask.typed_data();
  pixel_mask.batch = md[0];
  return ForwardWithMask(x, w, bias, pixel_mask, relu, y);
}

ffi::Error BwdData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> dx) {
  const auto dyd = dy.dimensions(), wd = w.dimensions(),
             dxd = dx->dimensions();
  if (dyd.size() != 4 || wd.size() != 4 || dxd.size() != 4 || wd[0] != 3 ||
      wd[1] != 3 || wd[3] != dyd[3] || dxd[0] != dyd[0] || dxd[1] != dyd[1] ||
      dxd[2] != dyd[2] || dxd[3] != wd[2] || wd[2] % 16 != 0 ||
      wd[3] % 16 != 0) {
    return ffi::Error::InvalidArgument(
        "vdsr winograd conv: expected dy (N, H, W, K), w (3, 3, C, K) and dx "
        "(N, H, W, C) with C and K multiples of 16");
  }
  const int64_t c = wd[2], k = wd[3];
  Buffer flipped = Allocate(9 * c * k), u = Allocate(kPos * c * k),
         zeros = Allocate(c);
  if (!flipped || !u || !zeros) return OutOfMemory();
  const Kernels* isa = Selected();
  if (isa == nullptr) return Unsupported();
  FlipKernel(w.typed_data(), c, k, flipped.get());
  isa->transform_kernel(flipped.get(), k, c, u.get());
  std::memset(zeros.get(), 0, sizeof(float) * c);
  return isa->convolve(dy.typed_data(), Tiling(dyd[0], dyd[1], dyd[2]), k,
                       u.get(), c, zeros.get(), false, PixelMask(),
                       dx->typed_data());
}

ffi::Error BwdWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dw) {
  const auto xd = x.dimensions(), dyd = dy.dimensions(),
             dud = dw->dimensions();
  if (xd.size() != 4 || dyd.size() != 4 ||
      xd[0] != dyd[0] || xd[1] != dyd[1] || xd[2] != dyd[2] ||
      dud.size() != 4 || dud[0] != 3 || dud[1] != 3 || dud[2] != xd[3] ||
      dud[3] != dyd[3] || xd[3] % 16 != 0 || dyd[3] % 16 != 0) {
    return ffi::Error::InvalidArgument(
        "vdsr winograd conv: expected x (N, H, W, C), dy (N, H, W, K) and a "
        "(3, 3, C, K) result with C and K multiples of 16");
  }
  const Kernels* isa = Selected();
  if (isa == nullptr) return Unsupported();
  return isa->weight_grad(x.typed_data(), dy.typed_data(),
                          Tiling(xd[0], xd[1], xd[2]), xd[3], dyd[3],
                          dw->typed_data());
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(VdsrWinogradFwd, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("relu")
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(VdsrWinogradFwdMasked, ForwardMasked,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("relu")
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(VdsrWinogradBwdData, BwdData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(VdsrWinogradBwdWeights, BwdWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// The vector width in bits of the kernels the handlers run: 512 (AVX-512),
// 256 (AVX2 + FMA) or 0 (neither: the kernels may not be called).
extern "C" int VdsrWinogradIsa() {
  const Kernels* isa = Selected();
  return isa == nullptr ? 0 : isa->vector_bits;
}

// Makes the handlers run the `vector_bits` kernels (512 or 256) from now on,
// for tests and benchmarks of one against the other. Returns 1, or 0 and
// changes nothing if this CPU lacks that instruction set. Not for use while
// a computation runs.
extern "C" int VdsrWinogradUseIsa(int vector_bits) {
  if (!CpuHas(vector_bits)) return 0;
  Selected() = vector_bits == 512 ? &kAvx512 : &kAvx2;
  return 1;
}
