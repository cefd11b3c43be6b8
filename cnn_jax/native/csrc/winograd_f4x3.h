// Winograd F(4x4, 3x3): the larger-tile sibling of winograd_f2x3.h (same layouts; its block
// loops, products and kernel transform are winograd_f2x3.h's, instantiated for the tile type
// F4x3 below), for the same stride-1, padding-1 3x3 layers when H and W are multiples of 4.
//
// Each 4x4 output tile comes from its 6x6 input window, with the transforms of Lavin & Gray
// (2016) for the points 0, 1, -1, 2, -2: 36 multiply-adds per channel pair for 16 outputs
// (2.25 per output, against 4 for F(2x2, 3x3) and 9 for the direct sum), so the products take
// 1.8x less time again. The price is float32 accuracy: the transforms' coefficients (up to 8
// in A, 5 in B, 1/24 in G) cancel large terms, so results are ~1e-5 of the largest entry off
// (forward 4e-6 to 8e-6, weight gradient up to 3e-5 at 16 channels and batch 128, against a
// float64 reference), 10-20x F(2x2, 3x3)'s. Hence opt-in: cpu_convolutions="onednn_winograd4"
// (docs/benchmarks-history.md, 2026-11-25, dd424a6).
#pragma once
#include "winograd_f2x3.h"

namespace winograd {

// r = B^T d for 6 vectors.
__attribute__((target("avx2,fma"))) inline void BT6(const __m256* d, __m256* r) {
  const __m256 four = _mm256_set1_ps(4.f), five = _mm256_set1_ps(5.f), two = _mm256_set1_ps(2.f);
  __m256 t0 = _mm256_fnmadd_ps(four, d[2], d[4]);  // d4 - 4 d2
  __m256 t1 = _mm256_fnmadd_ps(four, d[1], d[3]);  // d3 - 4 d1
  __m256 t2 = _mm256_sub_ps(d[4], d[2]);
  __m256 t3 = _mm256_mul_ps(two, _mm256_sub_ps(d[3], d[1]));
  r[0] = _mm256_fmadd_ps(four, d[0], _mm256_fnmadd_ps(five, d[2], d[4]));
  r[1] = _mm256_add_ps(t0, t1);
  r[2] = _mm256_sub_ps(t0, t1);
  r[3] = _mm256_add_ps(t2, t3);
  r[4] = _mm256_sub_ps(t2, t3);
  r[5] = _mm256_fmadd_ps(four, d[1], _mm256_fnmadd_ps(five, d[3], d[5]));
}

// o = A^T m for 6 vectors -> 4.
__attribute__((target("avx2,fma"))) inline void AT6(const __m256* m, __m256* o) {
  __m256 s12 = _mm256_add_ps(m[1], m[2]), d12 = _mm256_sub_ps(m[1], m[2]);
  __m256 s34 = _mm256_add_ps(m[3], m[4]), d34 = _mm256_sub_ps(m[3], m[4]);
  o[0] = _mm256_add_ps(_mm256_add_ps(m[0], s12), s34);
  o[1] = _mm256_fmadd_ps(_mm256_set1_ps(2.f), d34, d12);
  o[2] = _mm256_fmadd_ps(_mm256_set1_ps(4.f), s34, s12);
  o[3] = _mm256_add_ps(_mm256_fmadd_ps(_mm256_set1_ps(8.f), d34, d12), m[5]);
}

// q = A y for 4 vectors -> 6 (A = (A^T)^T).
__attribute__((target("avx2,fma"))) inline void A4(const __m256* y, __m256* q) {
  __m256 s02 = _mm256_add_ps(y[0], y[2]), s13 = _mm256_add_ps(y[1], y[3]);
  __m256 f02 = _mm256_fmadd_ps(_mm256_set1_ps(4.f), y[2], y[0]);
  __m256 f13 = _mm256_fmadd_ps(_mm256_set1_ps(8.f), y[3], _mm256_mul_ps(_mm256_set1_ps(2.f), y[1]));
  q[0] = y[0];
  q[1] = _mm256_add_ps(s02, s13);
  q[2] = _mm256_sub_ps(s02, s13);
  q[3] = _mm256_add_ps(f02, f13);
  q[4] = _mm256_sub_ps(f02, f13);
  q[5] = y[3];
}

// F(4x4, 3x3): 4x4 output tiles from 6x6 windows (points 0, 1, -1, 2, -2).
struct F4x3 {
  static constexpr int kTile = 4;
  static constexpr int kBlock = 18;  // tiles per block: V and M of 64 channels stay in L2
  static constexpr double kG[6][3] = {{1 / 4., 0, 0},
                                      {-1 / 6., -1 / 6., -1 / 6.},
                                      {-1 / 6., 1 / 6., -1 / 6.},
                                      {1 / 24., 1 / 12., 1 / 6.},
                                      {1 / 24., -1 / 12., 1 / 6.},
                                      {0, 0, 1}};

  // v[p][t][c] (position stride vs) = (B^T d B)[p] for the 6x6 input window d of each of the
  // T tiles from tile number `first`.
  __attribute__((target("avx2,fma"))) static void InputTransform(
      const float* x, int64_t first, int T, int H, int W, int C, float* v, int64_t vs) {
    const int TH = H / 4, TW = W / 4;
    TileCursor at(first, TH, TW);
    for (int t = 0; t < T; ++t, at.Next()) {
      const int64_t n = at.n;
      const int ti = at.ti, tj = at.tj;
      const int r0 = 4 * ti - 1, c0 = 4 * tj - 1;
      const float* xn = x + n * H * W * C;
      const bool interior = r0 >= 0 && r0 + 5 < H && c0 >= 0 && c0 + 5 < W;
      for (int c = 0; c < C; c += 8) {
        __m256 e[6][6];  // e[i][b] = (B^T d)[i][b]
        for (int b = 0; b < 6; ++b) {
          __m256 d[6];
          const int q = c0 + b;
#pragma GCC unroll 6
          for (int a = 0; a < 6; ++a) {
            const int r = r0 + a;
            d[a] = (interior || (r >= 0 && r < H && q >= 0 && q < W))
                       ? _mm256_loadu_ps(xn + (static_cast<int64_t>(r) * W + q) * C + c)
                       : _mm256_setzero_ps();
          }
          __m256 col[6];
          BT6(d, col);
#pragma GCC unroll 6
          for (int i = 0; i < 6; ++i) e[i][b] = col[i];
        }
        for (int i = 0; i < 6; ++i) {
          __m256 row[6];
          BT6(e[i], row);
          float* base = v + i * 6 * vs + t * C + c;
#pragma GCC unroll 6
          for (int j = 0; j < 6; ++j) _mm256_store_ps(base + j * vs, row[j]);
        }
      }
    }
  }

  // y's 4x4 output tile = A^T m A for each of the T tiles (m: position stride ms).
  __attribute__((target("avx2,fma"))) static void OutputTransform(
      const float* m, int64_t ms, int64_t first, int T, int H, int W, int O, float* y) {
    const int TH = H / 4, TW = W / 4;
    TileCursor at(first, TH, TW);
    for (int t = 0; t < T; ++t, at.Next()) {
      const int64_t n = at.n;
      const int ti = at.ti, tj = at.tj;
      float* yo = y + ((n * H + 4 * ti) * W + 4 * tj) * O;
      for (int o = 0; o < O; o += 8) {
        const float* mt = m + t * O + o;
        __m256 s[4][6];  // s = A^T m (rows)
        for (int j = 0; j < 6; ++j) {
          __m256 col[6], out[4];
#pragma GCC unroll 6
          for (int i = 0; i < 6; ++i) col[i] = _mm256_load_ps(mt + (i * 6 + j) * ms);
          AT6(col, out);
#pragma GCC unroll 4
          for (int r = 0; r < 4; ++r) s[r][j] = out[r];
        }
        for (int r = 0; r < 4; ++r) {
          __m256 out[4];
          AT6(s[r], out);
          float* row = yo + static_cast<int64_t>(r) * W * O + o;
#pragma GCC unroll 4
          for (int q = 0; q < 4; ++q) _mm256_storeu_ps(row + q * O, out[q]);
        }
      }
    }
  }

  // q[p][t][o] (position stride qs) = (A dY A^T)[p] for each of the T tiles' 4x4 cotangent dY.
  __attribute__((target("avx2,fma"))) static void CotangentTransform(
      const float* dy, int64_t first, int T, int H, int W, int O, float* q, int64_t qs) {
    const int TH = H / 4, TW = W / 4;
    TileCursor at(first, TH, TW);
    for (int t = 0; t < T; ++t, at.Next()) {
      const int64_t n = at.n;
      const int ti = at.ti, tj = at.tj;
      const float* g = dy + ((n * H + 4 * ti) * W + 4 * tj) * O;
      for (int o = 0; o < O; o += 8) {
        __m256 z[6][4];  // z = A dY (rows)
        for (int s = 0; s < 4; ++s) {
          __m256 col[4], out[6];
#pragma GCC unroll 4
          for (int r = 0; r < 4; ++r)
            col[r] = _mm256_loadu_ps(g + (static_cast<int64_t>(r) * W + s) * O + o);
          A4(col, out);
#pragma GCC unroll 6
          for (int i = 0; i < 6; ++i) z[i][s] = out[i];
        }
        for (int i = 0; i < 6; ++i) {
          __m256 out[6];
          A4(z[i], out);
          float* base = q + i * 6 * qs + t * O + o;
#pragma GCC unroll 6
          for (int j = 0; j < 6; ++j) _mm256_store_ps(base + j * qs, out[j]);
        }
      }
    }
  }
};

// Whether the F(4x4, 3x3) kernels take this correlation: as `Applies`, with H and W
// multiples of 4.
inline bool Applies4(int64_t kh, int64_t kw, int64_t h, int64_t w, int64_t c, int64_t o,
                     const int64_t* stride, const int64_t* dilation, const int64_t* pad_lo,
                     const int64_t* pad_hi) {
  return h % 4 == 0 && w % 4 == 0 &&
         Applies(kh, kw, h, w, c, o, stride, dilation, pad_lo, pad_hi);
}

}  // namespace winograd
