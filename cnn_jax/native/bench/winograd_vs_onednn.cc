// cnn_jax's Winograd kernels, F(2x2, 3x3) (cnn_jax/native/csrc/winograd_f2x3.h) and F(4x4, 3x3)
// (winograd_f4x3.h), against oneDNN's direct convolutions, alone, on the CIFAR ResNets'
// stride-1 3x3 layers.
//
// For each layer (batch, channels, size; default: the three stages of a 32x32 ResNet at batch
// 128, then the demo's 12x12 stages at batch 64) it times, best of 20 calls: oneDNN's
// forward, backward-data and backward-weights primitives (NHWC activations, `any` kernel
// layout, the weight gradient reordered back to HWIO, as cnn_jax/native/csrc/onednn_conv.cc does) and
// the same three products by Winograd with 2x2 and 4x4 output tiles (F4: sizes multiples of
// 4 only), and prints each one's error: its largest difference from a float64 direct sum over
// that sum's largest entry. GFLOP/s count the direct algorithm's 2*N*H*W*C*O*9 for all, so
// Winograd's figures are effective rates. Build and run from the repository root
// (docs/benchmarks-history.md, 2026-11-25, dd424a6):
//
//   B=$(mktemp -d); P=.venv; g++ -O2 -std=c++17 -fopenmp cnn_jax/native/bench/winograd_vs_onednn.cc -Icnn_jax/native/csrc \
//       -I$P/include -L$P/lib -ldnnl -Wl,-rpath,$P/lib -o $B/winograd_vs_onednn && \
//       $B/winograd_vs_onednn [N,C,H ...]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "winograd_f4x3.h"

using namespace dnnl;
using tag = memory::format_tag;

namespace {

engine eng(engine::kind::cpu, 0);

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

template <class F>
double BestMs(F f, int reps = 20) {
  f();
  double best = 1e9;
  for (int i = 0; i < reps; ++i) {
    double start = Now();
    f();
    best = std::min(best, Now() - start);
  }
  return best * 1e3;
}

double RelErr(const std::vector<float>& a, const std::vector<double>& exact) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::fabs(a[i] - exact[i]));
    scale = std::max(scale, std::fabs(exact[i]));
  }
  return diff / scale;
}

void Layer(int N, int C, int H) {
  const int O = C, W = H;
  std::vector<float> x(size_t(N) * H * W * C), w(9 * size_t(C) * O), dy(size_t(N) * H * W * O);
  for (auto& v : x) v = (rand() % 2000) / 1000.f - 1;
  for (auto& v : w) v = ((rand() % 2000) / 1000.f - 1) * 0.2f;
  for (auto& v : dy) v = (rand() % 2000) / 1000.f - 1;

  // float64 direct sums: y, dx, dw.
  std::vector<double> y64(dy.size(), 0), dx64(x.size(), 0), dw64(w.size(), 0);
  for (int n = 0; n < N; ++n)
    for (int h = 0; h < H; ++h)
      for (int q = 0; q < W; ++q)
        for (int a = 0; a < 3; ++a)
          for (int b = 0; b < 3; ++b) {
            const int r = h + a - 1, s = q + b - 1;
            if (r < 0 || r >= H || s < 0 || s >= W) continue;
            const size_t xi = ((size_t(n) * H + r) * W + s) * C, yi = ((size_t(n) * H + h) * W + q) * O;
            for (int c = 0; c < C; ++c)
              for (int o = 0; o < O; ++o) {
                const size_t wi = ((a * 3 + b) * size_t(C) + c) * O + o;
                y64[yi + o] += double(x[xi + c]) * w[wi];
                dx64[xi + c] += double(dy[yi + o]) * w[wi];
                dw64[wi] += double(x[xi + c]) * dy[yi + o];
              }
          }

  memory::dims src{N, C, H, W}, wei{O, C, 3, 3}, dst{N, O, H, W};
  auto act = [](const memory::dims& d) { return memory::desc(d, memory::data_type::f32, tag::nhwc); };
  memory::desc any_kernel(wei, memory::data_type::f32, tag::any);
  memory::desc user_kernel(wei, memory::data_type::f32, tag::hwio);
  primitive_attr attr;
  attr.set_scratchpad_mode(scratchpad_mode::user);
  stream s(eng);
  auto fwd = convolution_forward::primitive_desc(eng, prop_kind::forward_training,
      algorithm::convolution_direct, act(src), any_kernel, act(dst), {1, 1}, {0, 0}, {1, 1},
      {1, 1}, attr);
  auto bwd_data = convolution_backward_data::primitive_desc(eng, algorithm::convolution_direct,
      act(src), any_kernel, act(dst), {1, 1}, {0, 0}, {1, 1}, {1, 1}, fwd, attr);
  auto bwd_weights = convolution_backward_weights::primitive_desc(eng,
      algorithm::convolution_direct, act(src), any_kernel, act(dst), {1, 1}, {0, 0}, {1, 1},
      {1, 1}, fwd, attr);
  std::vector<float> y(dy.size()), dx(x.size()), dw(w.size());
  memory x_m(act(src), eng, x.data()), y_m(act(dst), eng, y.data()),
      dy_m(act(dst), eng, dy.data()), dx_m(act(src), eng, dx.data());
  memory w_user(user_kernel, eng, w.data()), w_fwd(fwd.weights_desc(), eng),
      w_bwd(bwd_data.weights_desc(), eng), dw_user(user_kernel, eng, dw.data()),
      dw_m(bwd_weights.diff_weights_desc(), eng);
  reorder(w_user, w_fwd).execute(s, w_user, w_fwd);
  reorder(w_user, w_bwd).execute(s, w_user, w_bwd);
  memory pad1(fwd.scratchpad_desc(), eng), pad2(bwd_data.scratchpad_desc(), eng),
      pad3(bwd_weights.scratchpad_desc(), eng);
  convolution_forward f(fwd);
  convolution_backward_data bd(bwd_data);
  convolution_backward_weights bw(bwd_weights);

  const double gflop = 2.0 * N * H * W * C * O * 9 / 1e9;
  const char* names[3] = {"forward", "input grad", "weight grad"};
  const std::vector<double>* exact[3] = {&y64, &dx64, &dw64};
  std::vector<float>* out[3] = {&y, &dx, &dw};
  double ms[3][3], err[3][3];  // [product][oneDNN, F2, F4]
  ms[0][0] = BestMs([&] { f.execute(s, {{DNNL_ARG_SRC, x_m}, {DNNL_ARG_WEIGHTS, w_fwd},
                                        {DNNL_ARG_DST, y_m}, {DNNL_ARG_SCRATCHPAD, pad1}}); s.wait(); });
  ms[1][0] = BestMs([&] { bd.execute(s, {{DNNL_ARG_DIFF_SRC, dx_m}, {DNNL_ARG_WEIGHTS, w_bwd},
                                         {DNNL_ARG_DIFF_DST, dy_m}, {DNNL_ARG_SCRATCHPAD, pad2}}); s.wait(); });
  ms[2][0] = BestMs([&] { bw.execute(s, {{DNNL_ARG_SRC, x_m}, {DNNL_ARG_DIFF_WEIGHTS, dw_m},
                                         {DNNL_ARG_DIFF_DST, dy_m}, {DNNL_ARG_SCRATCHPAD, pad3}});
                          reorder(dw_m, dw_user).execute(s, dw_m, dw_user); s.wait(); });
  for (int k = 0; k < 3; ++k) err[k][0] = RelErr(*out[k], *exact[k]);
  const bool four = H % 4 == 0 && W % 4 == 0;
  for (int tile : {2, 4}) {
    const int j = tile / 2;
    if (tile == 4 && !four) {
      for (int k = 0; k < 3; ++k) ms[k][j] = err[k][j] = NAN;
      continue;
    }
    using winograd::F2x3, winograd::F4x3;
    ms[0][j] = BestMs([&] { (tile == 4 ? winograd::ForwardBy<F4x3> : winograd::ForwardBy<F2x3>)(
                                x.data(), w.data(), y.data(), N, H, W, C, O); });
    ms[1][j] = BestMs([&] { (tile == 4 ? winograd::InputGradBy<F4x3>
                                         : winograd::InputGradBy<F2x3>)(
                                dy.data(), w.data(), dx.data(), N, H, W, C, O); });
    ms[2][j] = BestMs([&] { (tile == 4 ? winograd::WeightGradient<F4x3>
                                         : winograd::WeightGradient<F2x3>)(
                                x.data(), dy.data(), dw.data(), N, H, W, C, O); });
    for (int k = 0; k < 3; ++k) err[k][j] = RelErr(*out[k], *exact[k]);
  }
  for (int k = 0; k < 3; ++k)
    printf("N%-4d C%-3d %2dx%-2d %-12s oneDNN %6.2f ms (%5.1f GF/s, err %.1e)  F2 %6.2f ms "
           "(x%.2f, err %.1e)  F4 %6.2f ms (x%.2f, err %.1e)\n",
           N, C, H, W, names[k], ms[k][0], gflop / ms[k][0] * 1e3, err[k][0], ms[k][1],
           ms[k][0] / ms[k][1], err[k][1], ms[k][2], ms[k][0] / ms[k][2], err[k][2]);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::vector<int>> layers = {{128, 16, 32}, {128, 32, 16}, {128, 64, 8},
                                          {64, 16, 12}, {64, 32, 6}};
  if (argc > 1) layers.clear();
  for (int i = 1; i < argc; ++i) {
    int n, c, h;
    if (sscanf(argv[i], "%d,%d,%d", &n, &c, &h) != 3) {
      fprintf(stderr, "usage: %s [N,C,H ...]\n", argv[0]);
      return 2;
    }
    layers.push_back({n, c, h});
  }
  for (const auto& l : layers) Layer(l[0], l[1], l[2]);
}
