// The machine's peak float32 FMA rate: 2 OpenMP threads, each 12 independent AVX2 FMA chains
// (enough to cover the FMA latency), nothing loaded from memory. A ceiling for any convolution
// or matmul on the 2-core CI machine (docs/benchmarks-history.md, 2026-11-25, a757273):
//
//   B=$(mktemp -d); g++ -O3 -mavx2 -mfma -fopenmp cnn_jax/native/bench/fma_peak.cc -o $B/fma_peak && $B/fma_peak
//
// (-O3: at -O2 GCC keeps the 12 accumulators in memory and the loop runs at half the rate.)
#include <immintrin.h>
#include <omp.h>
#include <chrono>
#include <cstdio>
int main() {
  const long iters = 2400000000;  // ~1 s: long enough for the clock to settle
  for (int rep = 0; rep < 3; ++rep) {
    double t0 = omp_get_wtime();
    float sink = 0;
#pragma omp parallel num_threads(2) reduction(+ : sink)
    {
      __m256 a[12];
      for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(1.0f + i * 1e-7f);
      const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
      for (long k = 0; k < iters / 12; ++k)
        for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], b, c);
      float out[8];
      __m256 s = a[0];
      for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, a[i]);
      _mm256_storeu_ps(out, s);
      sink += out[0];
    }
    double t = omp_get_wtime() - t0;
    printf("%.1f GFLOP/s (2 threads x %ld FMAs x 8 lanes x 2 flops in %.2f s) sink %g\n",
           2.0 * (iters / 12 * 12) * 8 * 2 / t / 1e9, iters / 12 * 12, t, sink);
  }
}
