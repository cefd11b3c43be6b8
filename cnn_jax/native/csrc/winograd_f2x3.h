// Winograd F(2x2, 3x3) for the stride-1, padding-1 3x3 correlations of the CIFAR ResNets,
// on the CPU (AVX2 + FMA, OpenMP), in cnn_jax's layouts: activations (N, H, W, C), kernels
// (3, 3, C, O).
//
// Each 2x2 block ("tile") of outputs is computed from the 4x4 input window around it as
//   y_tile = A^T [ (G w G^T) . (B^T d B) ] A      (. elementwise over the 16 positions p),
// so the 9 C*O multiply-adds per output become 16/4 = 4 after the transforms: per position p,
// one (tiles x C) @ (C x O) matrix product. The weight gradient is the same products
// transposed: dU[p] = sum over tiles of V[p]^T (A dY A^T)[p], dw = G^T dU G. The input
// gradient is a forward correlation of dy with the kernel turned by 180 degrees and its
// channel axes swapped. Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
// CVPR 2016.
//
// Called by onednn_conv.cc's handlers where `Applies` holds (docs/benchmarks-history.md,
// 2026-11-25, dd424a6, measures it against oneDNN's direct convolutions). The products, the block loops
// and the kernel transforms here are generic over the tile (`Correlate<F>`,
// `WeightGradient<F>`, `TransformKernel<F>` for a tile type F: its size, transforms and block
// length); winograd_f4x3.h adds F(4x4, 3x3) as a second tile type.
#pragma once
#include <immintrin.h>
#include <omp.h>
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

namespace winograd {

// acc[R][2] (16 outputs) over K for R tiles: m[t][o0..o0+16] = sum_c v[t][c] u[c][o0..].
template <int R>
__attribute__((target("avx2,fma"))) inline void Micro(const float* v, int vstride,
                                                      const float* u, int ustride, int K,
                                                      float* m, int mstride) {
  __m256 acc[R][2];
#pragma GCC unroll 8
  for (int t = 0; t < R; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
  for (int c = 0; c < K; ++c) {
    __m256 u0 = _mm256_loadu_ps(u + c * ustride), u1 = _mm256_loadu_ps(u + c * ustride + 8);
#pragma GCC unroll 8
    for (int t = 0; t < R; ++t) {
      __m256 b = _mm256_broadcast_ss(v + t * vstride + c);
      acc[t][0] = _mm256_fmadd_ps(b, u0, acc[t][0]);
      acc[t][1] = _mm256_fmadd_ps(b, u1, acc[t][1]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < R; ++t) {
    _mm256_storeu_ps(m + t * mstride, acc[t][0]);
    _mm256_storeu_ps(m + t * mstride + 8, acc[t][1]);
  }
}

// Calls f(std::integral_constant<int, R>()) with R = rows, 1 to 6: a micro-kernel's
// compile-time row count for a run-time remainder.
template <typename F>
inline void WithRows(int rows, F f) {
  switch (rows) {
    case 6: f(std::integral_constant<int, 6>()); break;
    case 5: f(std::integral_constant<int, 5>()); break;
    case 4: f(std::integral_constant<int, 4>()); break;
    case 3: f(std::integral_constant<int, 3>()); break;
    case 2: f(std::integral_constant<int, 2>()); break;
    case 1: f(std::integral_constant<int, 1>()); break;
    default: break;
  }
}

// m (T x O) = v (T x C) u (C x O), O a multiple of 16.
__attribute__((target("avx2,fma"))) inline void Gemm(const float* v, const float* u, float* m,
                                                     int T, int C, int O) {
  for (int o = 0; o < O; o += 16)
    for (int t = 0; t < T; t += 6)
      WithRows(std::min(6, T - t), [&](auto rows) {
        Micro<decltype(rows)::value>(v + t * C, C, u + o, O, C, m + t * O + o, O);
      });
}

// acc (R x 16) += sum_t v[t][c0..c0+R] (x) q[t][o0..o0+16], kept in du (stride O).
template <int R>
__attribute__((target("avx2,fma"))) inline void MicroT(const float* v, int vstride,
                                                       const float* q, int qstride, int T,
                                                       float* du, int dstride) {
  __m256 acc[R][2];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    acc[i][0] = _mm256_loadu_ps(du + i * dstride);
    acc[i][1] = _mm256_loadu_ps(du + i * dstride + 8);
  }
  for (int t = 0; t < T; ++t) {
    __m256 q0 = _mm256_loadu_ps(q + t * qstride), q1 = _mm256_loadu_ps(q + t * qstride + 8);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      __m256 b = _mm256_broadcast_ss(v + t * vstride + i);
      acc[i][0] = _mm256_fmadd_ps(b, q0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(b, q1, acc[i][1]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    _mm256_storeu_ps(du + i * dstride, acc[i][0]);
    _mm256_storeu_ps(du + i * dstride + 8, acc[i][1]);
  }
}

// du (C x O) += v^T q for v (T x C), q (T x O); O a multiple of 16.
__attribute__((target("avx2,fma"))) inline void GemmT(const float* v, const float* q, float* du,
                                                      int T, int C, int O) {
  for (int o = 0; o < O; o += 16)
    for (int c = 0; c < C; c += 6)
      WithRows(std::min(6, C - c), [&](auto rows) {
        MicroT<decltype(rows)::value>(v + c, C, q + o, O, T, du + c * O + o, O);
      });
}

// The tiles of a batch of (N, tiles_h, tiles_w) tiles, row-major, from number `tile` on: the
// current one's image n, tile row ti and column tj; Next() steps to the following tile without
// the divisions that locating a tile by number takes (at 16 channels those cost ~as much as
// a tile's transform).
struct TileCursor {
  TileCursor(int64_t tile, int tiles_h, int tiles_w)
      : n(tile / (static_cast<int64_t>(tiles_h) * tiles_w)),
        ti(static_cast<int>(tile / tiles_w % tiles_h)),
        tj(static_cast<int>(tile % tiles_w)),
        tiles_h(tiles_h),
        tiles_w(tiles_w) {}
  void Next() {
    if (++tj < tiles_w) return;
    tj = 0;
    if (++ti < tiles_h) return;
    ti = 0;
    ++n;
  }
  int64_t n;
  int ti, tj;
  const int tiles_h, tiles_w;
};

// U[p][c][o], p = alpha i + j: (G w G^T)[i][j] for the 3x3 kernel w[kh][kw][c][o] (HWIO),
// with F's alpha x 3 kernel transform G (computed in float64, stored in float32).
template <class F>
void TransformKernel(const float* w, int C, int O, float* u) {
  constexpr int kAlpha = F::kTile + 2;
#pragma omp parallel for schedule(static)
  for (int c = 0; c < C; ++c)
    for (int o = 0; o < O; ++o) {
      double k[3][3], t[kAlpha][3];
      for (int a = 0; a < 3; ++a)
        for (int b = 0; b < 3; ++b) k[a][b] = w[((a * 3 + b) * C + c) * O + o];
      for (int i = 0; i < kAlpha; ++i)
        for (int b = 0; b < 3; ++b)
          t[i][b] = F::kG[i][0] * k[0][b] + F::kG[i][1] * k[1][b] + F::kG[i][2] * k[2][b];
      for (int i = 0; i < kAlpha; ++i)
        for (int j = 0; j < kAlpha; ++j)
          u[((i * kAlpha + j) * C + c) * O + o] = static_cast<float>(
              t[i][0] * F::kG[j][0] + t[i][1] * F::kG[j][1] + t[i][2] * F::kG[j][2]);
    }
}

// y (N,H,W,O) = correlation of x (N,H,W,C) with the kernel whose transform is u, padding 1,
// by F's tiles: in blocks of F::kBlock consecutive output tiles (row-major over images, tile
// rows, tile columns), input transform -> one product per position -> output transform.
// H, W multiples of F::kTile; C a multiple of 8; O a multiple of 16.
template <class F>
__attribute__((target("avx2,fma"))) void Correlate(const float* x, const float* u, float* y,
                                                   int N, int H, int W, int C, int O) {
  constexpr int kPositions = (F::kTile + 2) * (F::kTile + 2);
  const int64_t tiles = static_cast<int64_t>(N) * (H / F::kTile) * (W / F::kTile);
  const int64_t blocks = (tiles + F::kBlock - 1) / F::kBlock;
  const int64_t vs = static_cast<int64_t>(F::kBlock) * C, ms = static_cast<int64_t>(F::kBlock) * O;
#pragma omp parallel
  {
    float* v = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * kPositions * vs));
    float* m = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * kPositions * ms));
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t first = block * F::kBlock;
      const int T = static_cast<int>(std::min<int64_t>(F::kBlock, tiles - first));
      F::InputTransform(x, first, T, H, W, C, v, vs);
      for (int p = 0; p < kPositions; ++p)
        Gemm(v + p * vs, u + static_cast<int64_t>(p) * C * O, m + p * ms, T, C, O);
      F::OutputTransform(m, ms, first, T, H, W, O, y);
    }
    std::free(v);
    std::free(m);
  }
}

// dw (3,3,C,O) = the weight gradient of Correlate<F> for input x (N,H,W,C) and output
// cotangent dy (N,H,W,O): dU[p] = sum over tiles of V[p]^T Q[p] with Q = F's cotangent
// transform of dy's tile, then dw = G^T dU G.
template <class F>
__attribute__((target("avx2,fma"))) void WeightGradient(const float* x, const float* dy,
                                                        float* dw, int N, int H, int W, int C,
                                                        int O) {
  constexpr int kAlpha = F::kTile + 2, kPositions = kAlpha * kAlpha;
  const int64_t tiles = static_cast<int64_t>(N) * (H / F::kTile) * (W / F::kTile);
  const int64_t blocks = (tiles + F::kBlock - 1) / F::kBlock;
  const int64_t vs = static_cast<int64_t>(F::kBlock) * C, qs = static_cast<int64_t>(F::kBlock) * O;
  const int64_t us = static_cast<int64_t>(C) * O;
  // Each thread sums its blocks' products into its own dU; the partial sums are added in
  // thread order afterwards, so the result does not depend on which thread finishes first.
  const int max_threads = omp_get_max_threads();
  std::vector<float> partial(static_cast<size_t>(max_threads) * kPositions * us, 0.f);
  int threads = 1;
#pragma omp parallel num_threads(max_threads)
  {
#pragma omp single
    threads = omp_get_num_threads();
    float* v = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * kPositions * vs));
    float* q = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * kPositions * qs));
    float* du = partial.data() + static_cast<size_t>(omp_get_thread_num()) * kPositions * us;
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t first = block * F::kBlock;
      const int T = static_cast<int>(std::min<int64_t>(F::kBlock, tiles - first));
      F::InputTransform(x, first, T, H, W, C, v, vs);
      F::CotangentTransform(dy, first, T, H, W, O, q, qs);
      for (int p = 0; p < kPositions; ++p) GemmT(v + p * vs, q + p * qs, du + p * us, T, C, O);
    }
    std::free(v);
    std::free(q);
  }
  float* total = partial.data();
  for (int thread = 1; thread < threads; ++thread)
    for (int64_t i = 0; i < kPositions * us; ++i) total[i] += partial[thread * kPositions * us + i];
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b) {
      float* out = dw + (a * 3 + b) * us;
      for (int64_t k = 0; k < us; ++k) out[k] = 0.f;
      for (int i = 0; i < kAlpha; ++i)
        for (int j = 0; j < kAlpha; ++j) {
          const float f = static_cast<float>(F::kG[i][a] * F::kG[j][b]);
          if (f == 0.f) continue;
          const float* in = total + (i * kAlpha + j) * us;
          for (int64_t k = 0; k < us; ++k) out[k] += f * in[k];
        }
    }
}

// turned (3,3,O,C) = w (3,3,C,O) turned by 180 degrees, its channel axes swapped: the kernel
// of the input gradient.
inline void TurnKernel(const float* w, int C, int O, float* turned) {
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b)
      for (int c = 0; c < C; ++c)
        for (int o = 0; o < O; ++o)
          turned[((a * 3 + b) * O + o) * C + c] = w[(((2 - a) * 3 + (2 - b)) * C + c) * O + o];
}

// y = correlation of x (N,H,W,C) with w (3,3,C,O), padding 1, by F's tiles.
template <class F>
void ForwardBy(const float* x, const float* w, float* y, int N, int H, int W, int C, int O) {
  constexpr int kPositions = (F::kTile + 2) * (F::kTile + 2);
  std::vector<float> u(kPositions * static_cast<size_t>(C) * O);
  TransformKernel<F>(w, C, O, u.data());
  Correlate<F>(x, u.data(), y, N, H, W, C, O);
}

// dx (N,H,W,C) = the input gradient of ForwardBy<F> for output cotangent dy (N,H,W,O): dy
// correlated with the turned kernel.
template <class F>
void InputGradBy(const float* dy, const float* w, float* dx, int N, int H, int W, int C, int O) {
  std::vector<float> turned(9 * static_cast<size_t>(C) * O);
  TurnKernel(w, C, O, turned.data());
  ForwardBy<F>(dy, turned.data(), dx, N, H, W, O, C);
}

// F(2x2, 3x3): 2x2 output tiles from 4x4 windows (points 0, 1, -1).
struct F2x3 {
  static constexpr int kTile = 2;
  static constexpr int kBlock = 36;  // tiles per block
  static constexpr double kG[4][3] = {{1, 0, 0}, {.5, .5, .5}, {.5, -.5, .5}, {0, 0, 1}};

  // v[p][t][c] (stride vs between positions p) = (B^T d B)[p] for the 4x4 input window d of
  // each of the T tiles from tile number `first` (padding 1: rows/columns outside are zeros).
  __attribute__((target("avx2,fma"))) static void InputTransform(
      const float* x, int64_t first, int T, int H, int W, int C, float* v, int64_t vs) {
    const int TH = H / 2, TW = W / 2;
    TileCursor at(first, TH, TW);
    for (int t = 0; t < T; ++t, at.Next()) {
      const int64_t n = at.n;
      const int ti = at.ti, tj = at.tj;
      const int r0 = 2 * ti - 1, c0 = 2 * tj - 1;
      const float* xn = x + n * H * W * C;
      const bool interior = r0 >= 0 && r0 + 3 < H && c0 >= 0 && c0 + 3 < W;
      for (int c = 0; c < C; c += 8) {
        __m256 d[4][4];
        if (interior) {
#pragma GCC unroll 4
          for (int a = 0; a < 4; ++a)
#pragma GCC unroll 4
            for (int b = 0; b < 4; ++b)
              d[a][b] =
                  _mm256_loadu_ps(xn + (static_cast<int64_t>(r0 + a) * W + c0 + b) * C + c);
        } else {
          for (int a = 0; a < 4; ++a)
            for (int b = 0; b < 4; ++b) {
              const int r = r0 + a, q = c0 + b;
              d[a][b] = (r >= 0 && r < H && q >= 0 && q < W)
                            ? _mm256_loadu_ps(xn + (static_cast<int64_t>(r) * W + q) * C + c)
                            : _mm256_setzero_ps();
            }
        }
        __m256 e[4][4];  // B^T d: rows
#pragma GCC unroll 4
        for (int b = 0; b < 4; ++b) {
          e[0][b] = _mm256_sub_ps(d[0][b], d[2][b]);
          e[1][b] = _mm256_add_ps(d[1][b], d[2][b]);
          e[2][b] = _mm256_sub_ps(d[2][b], d[1][b]);
          e[3][b] = _mm256_sub_ps(d[1][b], d[3][b]);
        }
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {  // (B^T d) B: columns
          float* base = v + i * 4 * vs + t * C + c;
          _mm256_store_ps(base, _mm256_sub_ps(e[i][0], e[i][2]));
          _mm256_store_ps(base + vs, _mm256_add_ps(e[i][1], e[i][2]));
          _mm256_store_ps(base + 2 * vs, _mm256_sub_ps(e[i][2], e[i][1]));
          _mm256_store_ps(base + 3 * vs, _mm256_sub_ps(e[i][1], e[i][3]));
        }
      }
    }
  }

  // y's 2x2 output tile = A^T m A for each of the T tiles (m: position stride ms).
  __attribute__((target("avx2,fma"))) static void OutputTransform(
      const float* m, int64_t ms, int64_t first, int T, int H, int W, int O, float* y) {
    const int TH = H / 2, TW = W / 2;
    TileCursor at(first, TH, TW);
    for (int t = 0; t < T; ++t, at.Next()) {
      const int64_t n = at.n;
      const int ti = at.ti, tj = at.tj;
      float* yo = y + ((n * H + 2 * ti) * W + 2 * tj) * O;
      for (int o = 0; o < O; o += 8) {
        const float* mt = m + t * O + o;
        __m256 s[2][4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          __m256 m0 = _mm256_load_ps(mt + j * ms), m1 = _mm256_load_ps(mt + (4 + j) * ms);
          __m256 m2 = _mm256_load_ps(mt + (8 + j) * ms), m3 = _mm256_load_ps(mt + (12 + j) * ms);
          s[0][j] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
          s[1][j] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
        }
#pragma GCC unroll 2
        for (int r = 0; r < 2; ++r) {
          float* row = yo + static_cast<int64_t>(r) * W * O + o;
          _mm256_storeu_ps(row, _mm256_add_ps(_mm256_add_ps(s[r][0], s[r][1]), s[r][2]));
          _mm256_storeu_ps(row + O, _mm256_sub_ps(_mm256_sub_ps(s[r][1], s[r][2]), s[r][3]));
        }
      }
    }
  }

  // q[p][t][o] (position stride qs) = (A dY A^T)[p] for each of the T tiles' 2x2 cotangent dY.
  __attribute__((target("avx2,fma"))) static void CotangentTransform(
      const float* dy, int64_t first, int T, int H, int W, int O, float* q, int64_t qs) {
    const int TH = H / 2, TW = W / 2;
    TileCursor at(first, TH, TW);
    for (int t = 0; t < T; ++t, at.Next()) {
      const int64_t n = at.n;
      const int ti = at.ti, tj = at.tj;
      const float* g = dy + ((n * H + 2 * ti) * W + 2 * tj) * O;
      for (int o = 0; o < O; o += 8) {
        __m256 d00 = _mm256_loadu_ps(g + o), d01 = _mm256_loadu_ps(g + O + o);
        __m256 d10 = _mm256_loadu_ps(g + static_cast<int64_t>(W) * O + o);
        __m256 d11 = _mm256_loadu_ps(g + static_cast<int64_t>(W) * O + O + o);
        __m256 z[4][2] = {{d00, d01},
                          {_mm256_add_ps(d00, d10), _mm256_add_ps(d01, d11)},
                          {_mm256_sub_ps(d00, d10), _mm256_sub_ps(d01, d11)},
                          {_mm256_sub_ps(_mm256_setzero_ps(), d10),
                           _mm256_sub_ps(_mm256_setzero_ps(), d11)}};
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
          float* base = q + i * 4 * qs + t * O + o;
          _mm256_store_ps(base, z[i][0]);
          _mm256_store_ps(base + qs, _mm256_add_ps(z[i][0], z[i][1]));
          _mm256_store_ps(base + 2 * qs, _mm256_sub_ps(z[i][0], z[i][1]));
          _mm256_store_ps(base + 3 * qs, _mm256_sub_ps(_mm256_setzero_ps(), z[i][1]));
        }
      }
    }
  }
};

// Whether the kernels take this correlation: 3x3, stride 1, no dilation, padding 1 on every
// side, even H and W, C a multiple of 8 and O of 16, and a CPU with AVX2 and FMA.
inline bool Applies(int64_t kh, int64_t kw, int64_t h, int64_t w, int64_t c, int64_t o,
                    const int64_t* stride, const int64_t* dilation, const int64_t* pad_lo,
                    const int64_t* pad_hi) {
  static const bool cpu = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return cpu && kh == 3 && kw == 3 && h % 2 == 0 && w % 2 == 0 && c % 8 == 0 && o % 16 == 0 &&
         stride[0] == 1 && stride[1] == 1 && dilation[0] == 1 && dilation[1] == 1 &&
         pad_lo[0] == 1 && pad_lo[1] == 1 && pad_hi[0] == 1 && pad_hi[1] == 1;
}

}  // namespace winograd
