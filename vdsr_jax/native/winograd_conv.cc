// Winograd F(4x4, 3x3) convolutions of VDSR on AVX-512 CPUs, as XLA FFI
// handlers (Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks", CVPR 2016).
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
// float32, NHWC / position-major layouts, C and K multiples of 16, stride 1,
// zero padding 1. Threads: OpenMP over tile blocks; no state between calls.

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// The kernels below are AVX-512 code; the FFI handler wrappers and the
// library's load-time code after them are plain x86-64, so the library
// loads on any x86-64 CPU and VdsrWinogradSupported() says whether the
// kernels may be called.
#pragma GCC push_options
#pragma GCC target("avx512f,fma")

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

// r = B^T z for one 6-vector of 16-channel registers.
inline void InputRows(const __m512 z[6], __m512 r[6]) {
  const __m512 four = _mm512_set1_ps(4.f), five = _mm512_set1_ps(5.f),
               two = _mm512_set1_ps(2.f);
  r[0] = _mm512_fmadd_ps(four, z[0], _mm512_fnmadd_ps(five, z[2], z[4]));
  r[1] = _mm512_fnmadd_ps(four, _mm512_add_ps(z[1], z[2]),
                          _mm512_add_ps(z[3], z[4]));
  r[2] = _mm512_fmadd_ps(four, _mm512_sub_ps(z[1], z[2]),
                         _mm512_sub_ps(z[4], z[3]));
  r[3] = _mm512_fmadd_ps(two, _mm512_sub_ps(z[3], z[1]),
                         _mm512_sub_ps(z[4], z[2]));
  r[4] = _mm512_fmadd_ps(two, _mm512_sub_ps(z[1], z[3]),
                         _mm512_sub_ps(z[4], z[2]));
  r[5] = _mm512_fmadd_ps(four, z[1], _mm512_fnmadd_ps(five, z[3], z[5]));
}

// o = A^T m (6 -> 4).
inline void OutputRows(const __m512 m[6], __m512 o[4]) {
  const __m512 two = _mm512_set1_ps(2.f), four = _mm512_set1_ps(4.f),
               eight = _mm512_set1_ps(8.f);
  const __m512 s12 = _mm512_add_ps(m[1], m[2]), d12 = _mm512_sub_ps(m[1], m[2]);
  const __m512 s34 = _mm512_add_ps(m[3], m[4]), d34 = _mm512_sub_ps(m[3], m[4]);
  o[0] = _mm512_add_ps(_mm512_add_ps(m[0], s12), s34);
  o[1] = _mm512_fmadd_ps(two, d34, d12);
  o[2] = _mm512_fmadd_ps(four, s34, s12);
  o[3] = _mm512_add_ps(_mm512_fmadd_ps(eight, d34, d12), m[5]);
}

// e = A g (4 -> 6), the adjoint of OutputRows.
inline void GradRows(const __m512 g[4], __m512 e[6]) {
  const __m512 two = _mm512_set1_ps(2.f), four = _mm512_set1_ps(4.f),
               eight = _mm512_set1_ps(8.f);
  const __m512 s02 = _mm512_add_ps(g[0], g[2]), s13 = _mm512_add_ps(g[1], g[3]);
  const __m512 q02 = _mm512_fmadd_ps(four, g[2], g[0]);
  const __m512 q13 = _mm512_fmadd_ps(eight, g[3], _mm512_mul_ps(two, g[1]));
  e[0] = g[0];
  e[1] = _mm512_add_ps(s02, s13);
  e[2] = _mm512_sub_ps(s02, s13);
  e[3] = _mm512_add_ps(q02, q13);
  e[4] = _mm512_sub_ps(q02, q13);
  e[5] = g[3];
}

// Writes V = B^T d B of tile t, channels [c0, c0 + 16), to v[xi * stride].
// Pixels outside the image are the zero padding; t >= tiles gives zeros.
inline void TransformInputTile(const float* x, int64_t c, const Tiling& g,
                               int64_t t, int64_t c0, float* v,
                               int64_t stride) {
  __m512 d[6][6];
  if (t >= g.tiles) {
    for (int xi = 0; xi < kPos; ++xi) {
      _mm512_store_ps(v + xi * stride, _mm512_setzero_ps());
    }
    return;
  }
  int64_t b, ti, tj;
  g.Locate(t, &b, &ti, &tj);
  const int64_t y0 = ti * kM - 1, x0 = tj * kM - 1;
  for (int i = 0; i < kAlpha; ++i) {
    const int64_t y = y0 + i;
    for (int j = 0; j < kAlpha; ++j) {
      const int64_t xx = x0 + j;
      d[i][j] = (y >= 0 && y < g.h && xx >= 0 && xx < g.w)
                    ? _mm512_loadu_ps(x + ((b * g.h + y) * g.w + xx) * c + c0)
                    : _mm512_setzero_ps();
    }
  }
  __m512 rows[6][6];  // rows[i] = B^T applied along j, for input row i
  for (int i = 0; i < kAlpha; ++i) InputRows(d[i], rows[i]);
  for (int beta = 0; beta < kAlpha; ++beta) {
    __m512 col[6], out[6];
    for (int i = 0; i < kAlpha; ++i) col[i] = rows[i][beta];
    InputRows(col, out);
    for (int a = 0; a < kAlpha; ++a) {
      _mm512_store_ps(v + (a * kAlpha + beta) * stride, out[a]);
    }
  }
}

// Writes A dy A^T of tile t, channels [k0, k0 + 16), to e[xi * stride]; the
// tile's pixels outside the image count as zero (they are not outputs).
inline void TransformGradTile(const float* dy, int64_t k, const Tiling& g,
                              int64_t t, int64_t k0, float* e,
                              int64_t stride) {
  if (t >= g.tiles) {
    for (int xi = 0; xi < kPos; ++xi) {
      _mm512_store_ps(e + xi * stride, _mm512_setzero_ps());
    }
    return;
  }
  int64_t b, ti, tj;
  g.Locate(t, &b, &ti, &tj);
  __m512 rows[4][6];
  for (int i = 0; i < kM; ++i) {
    const int64_t y = ti * kM + i;
    __m512 r[4];
    for (int j = 0; j < kM; ++j) {
      const int64_t xx = tj * kM + j;
      r[j] = (y < g.h && xx < g.w)
                 ? _mm512_loadu_ps(dy + ((b * g.h + y) * g.w + xx) * k + k0)
                 : _mm512_setzero_ps();
    }
    GradRows(r, rows[i]);
  }
  for (int beta = 0; beta < kAlpha; ++beta) {
    __m512 col[4], out[6];
    for (int i = 0; i < kM; ++i) col[i] = rows[i][beta];
    GradRows(col, out);
    for (int a = 0; a < kAlpha; ++a) {
      _mm512_store_ps(e + (a * kAlpha + beta) * stride, out[a]);
    }
  }
}

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

// y tile = A^T M A + bias (ReLU'd if asked, times the mask if any),
// channels [k0, k0 + 16), cropped to the image.
inline void TransformOutputTile(const float* m, int64_t stride,
                                const float* bias, bool relu,
                                const PixelMask& mask, int64_t k,
                                const Tiling& g, int64_t t, int64_t k0,
                                float* y) {
  int64_t b, ti, tj;
  g.Locate(t, &b, &ti, &tj);
  const float* plane = mask.Plane(b, g);
  __m512 rows[6][4];  // rows[a] = A^T applied along beta, for position row a
  for (int a = 0; a < kAlpha; ++a) {
    __m512 mm[6];
    for (int beta = 0; beta < kAlpha; ++beta) {
      mm[beta] = _mm512_load_ps(m + (a * kAlpha + beta) * stride);
    }
    OutputRows(mm, rows[a]);
  }
  const __m512 bv = _mm512_loadu_ps(bias + k0), zero = _mm512_setzero_ps();
  for (int j = 0; j < kM; ++j) {
    const int64_t xx = tj * kM + j;
    __m512 col[6], out[4];
    for (int a = 0; a < kAlpha; ++a) col[a] = rows[a][j];
    OutputRows(col, out);
    if (xx >= g.w) continue;
    for (int i = 0; i < kM; ++i) {
      const int64_t yy = ti * kM + i;
      if (yy >= g.h) break;
      __m512 r = _mm512_add_ps(out[i], bv);
      if (relu) r = _mm512_max_ps(r, zero);
      if (plane != nullptr) {
        r = _mm512_mul_ps(r, _mm512_set1_ps(plane[yy * g.w + xx]));
      }
      _mm512_storeu_ps(y + ((b * g.h + yy) * g.w + xx) * k + k0, r);
    }
  }
}

// m[r, :16*NV] = sum_c v[r, c] u[c, :16*NV] for R rows (tiles): one
// register-blocked micro-tile of a position's GEMM (T x C) @ (C x K).
template <int R, int NV>
inline void GemmMicro(const float* v, int64_t c, const float* u, int64_t k,
                      float* m) {
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r) {
    for (int q = 0; q < NV; ++q) acc[r][q] = _mm512_setzero_ps();
  }
  for (int64_t ci = 0; ci < c; ++ci) {
    __m512 w[NV];
    for (int q = 0; q < NV; ++q) w[q] = _mm512_loadu_ps(u + ci * k + 16 * q);
    for (int r = 0; r < R; ++r) {
      const __m512 s = _mm512_set1_ps(v[r * c + ci]);
      for (int q = 0; q < NV; ++q) acc[r][q] = _mm512_fmadd_ps(s, w[q], acc[r][q]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int q = 0; q < NV; ++q) _mm512_store_ps(m + r * k + 16 * q, acc[r][q]);
  }
}

// du[r, :16*NV] += sum_t vx[t, r] e[t, :16*NV] for R rows (input channels)
// over `tiles` tiles: a micro-tile of a position's (C x T) @ (T x K).
template <int R, int NV>
inline void WgradMicro(const float* vx, int64_t c, const float* e, int64_t k,
                       int64_t tiles, float* du) {
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r) {
    for (int q = 0; q < NV; ++q) acc[r][q] = _mm512_loadu_ps(du + r * k + 16 * q);
  }
  for (int64_t t = 0; t < tiles; ++t) {
    __m512 w[NV];
    for (int q = 0; q < NV; ++q) w[q] = _mm512_load_ps(e + t * k + 16 * q);
    for (int r = 0; r < R; ++r) {
      const __m512 s = _mm512_set1_ps(vx[t * c + r]);
      for (int q = 0; q < NV; ++q) acc[r][q] = _mm512_fmadd_ps(s, w[q], acc[r][q]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int q = 0; q < NV; ++q) _mm512_storeu_ps(du + r * k + 16 * q, acc[r][q]);
  }
}

template <int R>
inline void GemmRowsAnyK(const float* v, int64_t c, const float* u, int64_t k,
                         float* m) {
  int64_t k0 = 0;
  for (; k0 + 64 <= k; k0 += 64) GemmMicro<R, 4>(v, c, u + k0, k, m + k0);
  switch ((k - k0) / 16) {
    case 3: GemmMicro<R, 3>(v, c, u + k0, k, m + k0); break;
    case 2: GemmMicro<R, 2>(v, c, u + k0, k, m + k0); break;
    case 1: GemmMicro<R, 1>(v, c, u + k0, k, m + k0); break;
    default: break;
  }
}

template <int R>
inline void WgradRowsAnyK(const float* vx, int64_t c, const float* e,
                          int64_t k, int64_t tiles, float* du) {
  int64_t k0 = 0;
  for (; k0 + 64 <= k; k0 += 64) {
    WgradMicro<R, 4>(vx, c, e + k0, k, tiles, du + k0);
  }
  switch ((k - k0) / 16) {
    case 3: WgradMicro<R, 3>(vx, c, e + k0, k, tiles, du + k0); break;
    case 2: WgradMicro<R, 2>(vx, c, e + k0, k, tiles, du + k0); break;
    case 1: WgradMicro<R, 1>(vx, c, e + k0, k, tiles, du + k0); break;
    default: break;
  }
}

inline void WgradRowsTail(int rows, const float* vx, int64_t c, const float* e,
                          int64_t k, int64_t tiles, float* du) {
  switch (rows) {
    case 5: WgradRowsAnyK<5>(vx, c, e, k, tiles, du); break;
    case 4: WgradRowsAnyK<4>(vx, c, e, k, tiles, du); break;
    case 3: WgradRowsAnyK<3>(vx, c, e, k, tiles, du); break;
    case 2: WgradRowsAnyK<2>(vx, c, e, k, tiles, du); break;
    case 1: WgradRowsAnyK<1>(vx, c, e, k, tiles, du); break;
    default: break;
  }
}

// G of F(4x4, 3x3): U = G w G^T.
constexpr float kG[6][3] = {{1.f / 4, 0.f, 0.f},
                            {-1.f / 6, -1.f / 6, -1.f / 6},
                            {-1.f / 6, 1.f / 6, -1.f / 6},
                            {1.f / 24, 1.f / 12, 1.f / 6},
                            {1.f / 24, -1.f / 12, 1.f / 6},
                            {0.f, 0.f, 1.f}};

// u[xi][ci][ko] = (G w G^T)[xi] for an HWIO kernel w[3][3][c][k], vectorised
// over the k output channels (a multiple of 16).
void TransformKernel(const float* w, int64_t c, int64_t k, float* u) {
#pragma omp parallel for schedule(static)
  for (int64_t ci = 0; ci < c; ++ci) {
    for (int64_t k0 = 0; k0 < k; k0 += 16) {
      __m512 g[3][3];
      for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) {
          g[i][j] = _mm512_loadu_ps(w + ((i * 3 + j) * c + ci) * k + k0);
        }
      }
      for (int a = 0; a < kAlpha; ++a) {
        __m512 t[3];  // (G w)[a][j]
        for (int j = 0; j < 3; ++j) {
          t[j] = _mm512_setzero_ps();
          for (int i = 0; i < 3; ++i) {
            t[j] = _mm512_fmadd_ps(_mm512_set1_ps(kG[a][i]), g[i][j], t[j]);
          }
        }
        for (int b = 0; b < kAlpha; ++b) {
          __m512 r = _mm512_setzero_ps();
          for (int j = 0; j < 3; ++j) {
            r = _mm512_fmadd_ps(_mm512_set1_ps(kG[b][j]), t[j], r);
          }
          _mm512_storeu_ps(u + ((a * kAlpha + b) * c + ci) * k + k0, r);
        }
      }
    }
  }
}

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

// dw[i][j][ci][ko] = (G^T du G)[i][j] for du[36][c][k], vectorised over k.
void UntransformKernelGrad(const float* du, int64_t c, int64_t k, float* dw) {
#pragma omp parallel for schedule(static)
  for (int64_t ci = 0; ci < c; ++ci) {
    for (int64_t k0 = 0; k0 < k; k0 += 16) {
      __m512 t[kAlpha][3];  // (du G)[a][j]
      for (int a = 0; a < kAlpha; ++a) {
        for (int j = 0; j < 3; ++j) t[a][j] = _mm512_setzero_ps();
        for (int b = 0; b < kAlpha; ++b) {
          const __m512 d =
              _mm512_loadu_ps(du + ((a * kAlpha + b) * c + ci) * k + k0);
          for (int j = 0; j < 3; ++j) {
            t[a][j] = _mm512_fmadd_ps(_mm512_set1_ps(kG[b][j]), d, t[a][j]);
          }
        }
      }
      for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) {
          __m512 r = _mm512_setzero_ps();
          for (int a = 0; a < kAlpha; ++a) {
            r = _mm512_fmadd_ps(_mm512_set1_ps(kG[a][i]), t[a][j], r);
          }
          _mm512_storeu_ps(dw + ((i * 3 + j) * c + ci) * k + k0, r);
        }
      }
    }
  }
}

// y = conv(x, w) + bias (ReLU'd if asked, times the mask if any) given the
// transformed kernel u.
ffi::Error Convolve(const float* xp, const Tiling& g, int64_t c,
                    const float* up, int64_t k, const float* bp, bool relu,
                    const PixelMask& mask, float* yp) {
  const int64_t blocks = (g.tiles + kBlockTiles - 1) / kBlockTiles;
  // Per thread: the block's transformed input V[xi][t][c] and the GEMM
  // results M[xi][t][k], ~0.9 MB for C = K = 64 (fits in L2).
  const int threads = omp_get_max_threads();
  const int64_t vs = PositionStride(c), ms = PositionStride(k);
  Buffer v = Allocate(threads * kPos * vs), m = Allocate(threads * kPos * ms);
  if (!v || !m) return OutOfMemory();
#pragma omp parallel num_threads(threads)
  {
    float* vt = v.get() + omp_get_thread_num() * kPos * vs;
    float* mt = m.get() + omp_get_thread_num() * kPos * ms;
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t t0 = blk * kBlockTiles;
      const int64_t nt = std::min<int64_t>(kBlockTiles, g.tiles - t0);
      const int64_t padded = (nt + kRows - 1) / kRows * kRows;
      for (int64_t tt = 0; tt < padded; ++tt) {
        for (int64_t c0 = 0; c0 < c; c0 += 16) {
          TransformInputTile(xp, c, g, t0 + tt, c0, vt + tt * c + c0, vs);
        }
      }
      for (int xi = 0; xi < kPos; ++xi) {
        const float* vxi = vt + xi * vs;
        const float* uxi = up + xi * c * k;
        float* mxi = mt + xi * ms;
        for (int64_t tt = 0; tt < padded; tt += kRows) {
          GemmRowsAnyK<kRows>(vxi + tt * c, c, uxi, k, mxi + tt * k);
        }
      }
      for (int64_t tt = 0; tt < nt; ++tt) {
        for (int64_t k0 = 0; k0 < k; k0 += 16) {
          TransformOutputTile(mt + tt * k + k0, ms, bp, relu, mask, k, g,
                              t0 + tt, k0, yp);
        }
      }
    }
  }
  return ffi::Error::Success();
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
  TransformKernel(w.typed_data(), c, k, u.get());
  return Convolve(x.typed_data(), Tiling(xd[0], xd[1], xd[2]), c, u.get(), k,
                  bias.typed_data(), relu, mask, y->typed_data());
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
  FlipKernel(w.typed_data(), c, k, flipped.get());
  TransformKernel(flipped.get(), k, c, u.get());
  std::memset(zeros.get(), 0, sizeof(float) * c);
  return Convolve(dy.typed_data(), Tiling(dyd[0], dyd[1], dyd[2]), k, u.get(),
                  c, zeros.get(), false, PixelMask(), dx->typed_data());
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
  const int64_t c = xd[3], k = dyd[3];
  const Tiling g(xd[0], xd[1], xd[2]);
  const int64_t blocks = (g.tiles + kBlockTiles - 1) / kBlockTiles;
  const float* xp = x.typed_data();
  const float* dyp = dy.typed_data();
  // Per thread: the block's transformed x and dy, and the thread's partial
  // sums of dL/du; then their total.
  const int threads = omp_get_max_threads();
  const int64_t vs = PositionStride(c), es = PositionStride(k),
                us = kPos * c * k;
  Buffer vx_all = Allocate(threads * kPos * vs),
         e_all = Allocate(threads * kPos * es),
         acc_all = Allocate(threads * us), du = Allocate(us);
  if (!vx_all || !e_all || !acc_all || !du) return OutOfMemory();
  float* out = du.get();
  std::memset(out, 0, sizeof(float) * us);
#pragma omp parallel num_threads(threads)
  {
    const int64_t id = omp_get_thread_num();
    float* vx = vx_all.get() + id * kPos * vs;
    float* e = e_all.get() + id * kPos * es;
    float* acc = acc_all.get() + id * us;
    std::memset(acc, 0, sizeof(float) * us);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t t0 = blk * kBlockTiles;
      const int64_t nt = std::min<int64_t>(kBlockTiles, g.tiles - t0);
      for (int64_t tt = 0; tt < nt; ++tt) {
        for (int64_t c0 = 0; c0 < c; c0 += 16) {
          TransformInputTile(xp, c, g, t0 + tt, c0, vx + tt * c + c0, vs);
        }
        for (int64_t k0 = 0; k0 < k; k0 += 16) {
          TransformGradTile(dyp, k, g, t0 + tt, k0, e + tt * k + k0, es);
        }
      }
      for (int xi = 0; xi < kPos; ++xi) {
        const float* vxi = vx + xi * vs;
        const float* exi = e + xi * es;
        float* axi = acc + xi * c * k;
        int64_t c0 = 0;
        for (; c0 + kRows <= c; c0 += kRows) {
          WgradRowsAnyK<kRows>(vxi + c0, c, exi, k, nt, axi + c0 * k);
        }
        WgradRowsTail(static_cast<int>(c - c0), vxi + c0, c, exi, k, nt,
                      axi + c0 * k);
      }
    }
#pragma omp critical
    for (int64_t i = 0; i < us; ++i) out[i] += acc[i];
  }
  UntransformKernelGrad(out, c, k, dw->typed_data());
  return ffi::Error::Success();
}

}  // namespace

#pragma GCC pop_options

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

// 1 if this CPU runs the kernels (AVX-512F), else 0.
extern "C" int VdsrWinogradSupported() {
  return __builtin_cpu_supports("avx512f") ? 1 : 0;
}
