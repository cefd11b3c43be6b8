// BatchNorm's per-channel sums over the activations (cnn_jax.native, channel_moments /
// channel_grad_sums; used by cnn_jax.ops.hand.normalization).
//
// XLA's formulation materializes each product whose sum is wanted (for the matmul that sums
// it) and reads the activation again for every sum; here each sum reads its inputs once and
// writes only the C results.
//
// Arrays are (rows, C) float32, C a multiple of 8. Sums run in float32 over blocks of
// kBlockRows rows and the block sums are added in float64 (so the error does not grow with
// the number of rows). One thread: these sums are memory-bound, and a second OpenMP thread
// measured no faster (~7 GB/s either way on the 2-core machine, docs/benchmarks.md).
#ifndef CNN_JAX_OPS_CHANNEL_SUMS_H_
#define CNN_JAX_OPS_CHANNEL_SUMS_H_

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace channel_sums {

constexpr int64_t kBlockRows = 256;

// out[k][c] = the sum over all rows of term k, for the kTerms terms a Block functor sums:
// block(first, last, c, acc) writes, for each term k, its sum over rows first..last-1 of the
// 8 channels c..c+7 to acc[k * C + c .. + 7] (accumulating in registers across the rows).
template <int kTerms, class Block>
__attribute__((target("avx2,fma"))) void SumRows(int64_t rows, int C, Block block,
                                                 double* out[kTerms]) {
  std::vector<float> sums(static_cast<size_t>(kTerms) * C);
  for (int k = 0; k < kTerms; ++k) std::fill(out[k], out[k] + C, 0.0);
  for (int64_t first = 0; first < rows; first += kBlockRows) {
    const int64_t last = std::min(rows, first + kBlockRows);
    for (int c = 0; c < C; c += 8) block(first, last, c, sums.data());
    for (int k = 0; k < kTerms; ++k)
      for (int c = 0; c < C; ++c) out[k][c] += sums[k * C + c];
  }
}

// The block functors: structs, not lambdas (a lambda does not inherit its enclosing
// function's AVX2 target, which the intrinsics need). Two accumulators per term, for
// alternate rows, so that consecutive adds do not wait on each other.
struct SumBlock {  // x
  const float* x;
  int C;
  __attribute__((target("avx2,fma"))) void operator()(int64_t first, int64_t last, int c,
                                                      float* acc) const {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t r = first;
    for (; r + 1 < last; r += 2) {
      s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + r * C + c));
      s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + (r + 1) * C + c));
    }
    if (r < last) s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + r * C + c));
    _mm256_storeu_ps(acc + c, _mm256_add_ps(s0, s1));
  }
};

struct SquaredDeviationBlock {  // (x - mean)^2
  const float *x, *mean;
  int C;
  __attribute__((target("avx2,fma"))) void operator()(int64_t first, int64_t last, int c,
                                                      float* acc) const {
    const __m256 mu = _mm256_loadu_ps(mean + c);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t r = first;
    for (; r + 1 < last; r += 2) {
      __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + r * C + c), mu);
      __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(x + (r + 1) * C + c), mu);
      s0 = _mm256_fmadd_ps(d0, d0, s0);
      s1 = _mm256_fmadd_ps(d1, d1, s1);
    }
    if (r < last) {
      __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + r * C + c), mu);
      s0 = _mm256_fmadd_ps(d, d, s0);
    }
    _mm256_storeu_ps(acc + c, _mm256_add_ps(s0, s1));
  }
};

struct GradTermsBlock {  // g, and g (x - mean)
  const float *g, *x, *mean;
  int C;
  __attribute__((target("avx2,fma"))) void operator()(int64_t first, int64_t last, int c,
                                                      float* acc) const {
    const __m256 mu = _mm256_loadu_ps(mean + c);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
    int64_t r = first;
    for (; r + 1 < last; r += 2) {
      __m256 g0 = _mm256_loadu_ps(g + r * C + c), g1 = _mm256_loadu_ps(g + (r + 1) * C + c);
      a0 = _mm256_add_ps(a0, g0);
      a1 = _mm256_add_ps(a1, g1);
      b0 = _mm256_fmadd_ps(g0, _mm256_sub_ps(_mm256_loadu_ps(x + r * C + c), mu), b0);
      b1 = _mm256_fmadd_ps(g1, _mm256_sub_ps(_mm256_loadu_ps(x + (r + 1) * C + c), mu), b1);
    }
    if (r < last) {
      __m256 g0 = _mm256_loadu_ps(g + r * C + c);
      a0 = _mm256_add_ps(a0, g0);
      b0 = _mm256_fmadd_ps(g0, _mm256_sub_ps(_mm256_loadu_ps(x + r * C + c), mu), b0);
    }
    _mm256_storeu_ps(acc + c, _mm256_add_ps(a0, a1));
    _mm256_storeu_ps(acc + C + c, _mm256_add_ps(b0, b1));
  }
};

// Per-channel mean and biased variance of x (rows, C): the mean, then the mean of the
// squared deviations from it (two passes: no cancellation, unlike E[x^2] - E[x]^2).
inline void Moments(const float* x, int64_t rows, int C, float* mean, float* var) {
  std::vector<double> sum(C), squares(C);
  double* sums[1] = {sum.data()};
  SumRows<1>(rows, C, SumBlock{x, C}, sums);
  for (int c = 0; c < C; ++c) mean[c] = static_cast<float>(sum[c] / rows);
  double* deviations[1] = {squares.data()};
  SumRows<1>(rows, C, SquaredDeviationBlock{x, mean, C}, deviations);
  for (int c = 0; c < C; ++c) var[c] = static_cast<float>(squares[c] / rows);
}

// Per channel, the sum of g and the sum of g (x - mean), for g, x (rows, C): BatchNorm's
// backward sums (dL/dbias, and dL/dscale before its factor 1/std), in one pass over both.
inline void GradSums(const float* g, const float* x, const float* mean, int64_t rows, int C,
                     float* sum_g, float* sum_g_centred) {
  std::vector<double> a(C), b(C);
  double* sums[2] = {a.data(), b.data()};
  SumRows<2>(rows, C, GradTermsBlock{g, x, mean, C}, sums);
  for (int c = 0; c < C; ++c) {
    sum_g[c] = static_cast<float>(a[c]);
    sum_g_centred[c] = static_cast<float>(b[c]);
  }
}

}  // namespace channel_sums

#endif  // CNN_JAX_OPS_CHANNEL_SUMS_H_
