// oneDNN's 2-D convolutions as XLA FFI handlers: forward, backward data, backward weights.
//
// Built by `python -m cnn_jax.native build` (and by `pip install`) against the pinned
// onednn-cpu-gomp wheel; loaded and wrapped as differentiable JAX functions by
// cnn_jax/native/ffi.py, which documents the contract. Every handler takes float32 arrays in
// the layouts cnn_jax uses everywhere (activations (N, H, W, C), kernels (KH, KW, C_in,
// C_out)), so no transposes run on the XLA side; oneDNN picks its own kernel layout and the
// handlers reorder the (small) kernel to and from it. Attributes: stride, dilation (1 = dense),
// pad_lo, pad_hi, two int64 each, as in cnn_jax.ops.correlation.WindowSpec; winograd (0, 2 or
// 4): the largest Winograd output tile to use for the layers winograd_f2x3.h / _f4x3.h take
// (stride-1 3x3, padding 1; 0: oneDNN's direct algorithm for every layer).

#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"
#include "channel_sums.h"
#include "winograd_f4x3.h"  // and winograd_f2x3.h

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

// How many convolutions (of any of the three kinds) ran as Winograd, by output tile (2, 4):
// read by the tests through CnnJaxWinogradCalls, to see which path a shape took.
std::atomic<int64_t> winograd_calls[5];

// The Winograd output tile (4, 2, or 0: none) for a correlation of kernel (kh, kw) over an
// (h, w) image from c to o channels, given the largest tile asked for.
int WinogradTile(int64_t asked, int64_t kh, int64_t kw, int64_t h, int64_t w, int64_t c,
                 int64_t o, ffi::Span<const int64_t> stride, ffi::Span<const int64_t> dilation,
                 ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi) {
  const int64_t *s = stride.begin(), *d = dilation.begin(), *lo = pad_lo.begin(),
                *hi = pad_hi.begin();
  if (asked >= 4 && winograd::Applies4(kh, kw, h, w, c, o, s, d, lo, hi)) return 4;
  if (asked >= 2 && winograd::Applies(kh, kw, h, w, c, o, s, d, lo, hi)) return 2;
  return 0;
}

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// oneDNN's logical dims: activations (N, C, H, W), kernels (O, I, KH, KW); dilation counts the
// skipped entries (0 = dense).
struct Geometry {
  memory::dims src, wei, dst, strides, dilates, pad_l, pad_r;
};

Geometry MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                      ffi::Span<const int64_t> y, ffi::Span<const int64_t> stride,
                      ffi::Span<const int64_t> dilation, ffi::Span<const int64_t> pad_lo,
                      ffi::Span<const int64_t> pad_hi) {
  Geometry g;
  g.src = {x[0], x[3], x[1], x[2]};
  g.wei = {w[3], w[2], w[0], w[1]};
  g.dst = {y[0], y[3], y[1], y[2]};
  g.strides = {stride[0], stride[1]};
  g.dilates = {dilation[0] - 1, dilation[1] - 1};
  g.pad_l = {pad_lo[0], pad_lo[1]};
  g.pad_r = {pad_hi[0], pad_hi[1]};
  return g;
}

memory::desc Activations(const memory::dims& dims) {
  return memory::desc(dims, memory::data_type::f32, memory::format_tag::nhwc);
}
memory::desc UserKernel(const memory::dims& dims) {
  return memory::desc(dims, memory::data_type::f32, memory::format_tag::hwio);
}
memory::desc AnyKernel(const memory::dims& dims) {
  return memory::desc(dims, memory::data_type::f32, memory::format_tag::any);
}

// Each call brings its own scratchpad: XLA runs independent ops on several threads at once,
// and oneDNN's default (library-owned, global) scratchpad is not safe for concurrent
// executions (seen as crashes in gemm-based convolutions' im2col buffers).
dnnl::primitive_attr Attributes() {
  dnnl::primitive_attr attributes;
  attributes.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attributes;
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      Activations(g.src), AnyKernel(g.wei), Activations(g.dst), g.strides, g.dilates, g.pad_l,
      g.pad_r, Attributes());
}

// A primitive, the kernel layout it wants and its scratchpad; created once per (kind,
// geometry).
struct Cached {
  dnnl::primitive primitive;
  memory::desc kernel;
  memory::desc scratchpad;
};

std::string Key(const char* kind, const Geometry& g) {
  std::string key(kind);
  for (const auto* dims : {&g.src, &g.wei, &g.dst, &g.strides, &g.dilates, &g.pad_l, &g.pad_r}) {
    for (auto d : *dims) key += "," + std::to_string(d);
    key += ";";
  }
  return key;
}

template <typename Make>
Cached Lookup(const std::string& key, Make make) {
  static std::mutex mutex;
  static std::unordered_map<std::string, Cached> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, make()).first;
  return it->second;
}

// A reorder (layout change) with its own scratchpad, like the convolutions.
void Reorder(memory& from, memory& to, dnnl::stream& stream) {
  dnnl::reorder::primitive_desc desc(from, to, Attributes());
  memory scratchpad(desc.scratchpad_desc(), Engine());
  dnnl::reorder(desc).execute(stream, {{DNNL_ARG_FROM, from},
                                       {DNNL_ARG_TO, to},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
}

// The user's (KH, KW, I, O) kernel in the layout `want`: the buffer itself, or a reordered copy.
memory KernelIn(const memory::desc& want, memory user, dnnl::stream& stream) {
  if (want == user.get_desc()) return user;
  memory reordered(want, Engine());
  Reorder(user, reordered, stream);
  return reordered;
}

ffi::Error ForwardUnchecked(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y, ffi::Span<const int64_t> stride,
                   ffi::Span<const int64_t> dilation, ffi::Span<const int64_t> pad_lo,
                   ffi::Span<const int64_t> pad_hi, int64_t winograd) {
  auto xd = x.dimensions(), wd = w.dimensions();
  if (int tile = WinogradTile(winograd, wd[0], wd[1], xd[1], xd[2], wd[2], wd[3], stride,
                              dilation, pad_lo, pad_hi)) {
    (tile == 4 ? winograd::ForwardBy<winograd::F4x3> : winograd::ForwardBy<winograd::F2x3>)(
        x.typed_data(), w.typed_data(), y->typed_data(), xd[0], xd[1], xd[2], wd[2], wd[3]);
    ++winograd_calls[tile];
    return ffi::Error::Success();
  }
  Geometry g = MakeGeometry(xd, wd, y->dimensions(), stride, dilation, pad_lo, pad_hi);
  Cached c = Lookup(Key("forward", g), [&] {
    auto desc = ForwardDesc(g);
    return Cached{dnnl::primitive(desc), desc.weights_desc(), desc.scratchpad_desc()};
  });
  dnnl::stream stream(Engine());
  memory src(Activations(g.src), Engine(), x.typed_data());
  memory kernel = KernelIn(c.kernel, memory(UserKernel(g.wei), Engine(), w.typed_data()), stream);
  memory dst(Activations(g.dst), Engine(), y->typed_data());
  memory scratchpad(c.scratchpad, Engine());
  c.primitive.execute(stream, {{DNNL_ARG_SRC, src},
                               {DNNL_ARG_WEIGHTS, kernel},
                               {DNNL_ARG_DST, dst},
                               {DNNL_ARG_SCRATCHPAD, scratchpad}});
  stream.wait();
  return ffi::Error::Success();
}

ffi::Error BackwardDataUnchecked(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                        ffi::ResultBuffer<ffi::F32> dx, ffi::Span<const int64_t> stride,
                        ffi::Span<const int64_t> dilation, ffi::Span<const int64_t> pad_lo,
                        ffi::Span<const int64_t> pad_hi, int64_t winograd) {
  auto xd = dx->dimensions(), wd = w.dimensions();
  // The input gradient is itself a correlation, from O channels to C.
  if (int tile = WinogradTile(winograd, wd[0], wd[1], xd[1], xd[2], wd[3], wd[2], stride,
                              dilation, pad_lo, pad_hi)) {
    (tile == 4 ? winograd::InputGradBy<winograd::F4x3> : winograd::InputGradBy<winograd::F2x3>)(
        dy.typed_data(), w.typed_data(), dx->typed_data(), xd[0], xd[1], xd[2], wd[2], wd[3]);
    ++winograd_calls[tile];
    return ffi::Error::Success();
  }
  Geometry g = MakeGeometry(xd, wd, dy.dimensions(), stride, dilation, pad_lo, pad_hi);
  Cached c = Lookup(Key("backward_data", g), [&] {
    auto desc = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, Activations(g.src), AnyKernel(g.wei),
        Activations(g.dst), g.strides, g.dilates, g.pad_l, g.pad_r, ForwardDesc(g),
        Attributes());
    return Cached{dnnl::primitive(desc), desc.weights_desc(), desc.scratchpad_desc()};
  });
  dnnl::stream stream(Engine());
  memory diff_src(Activations(g.src), Engine(), dx->typed_data());
  memory kernel = KernelIn(c.kernel, memory(UserKernel(g.wei), Engine(), w.typed_data()), stream);
  memory diff_dst(Activations(g.dst), Engine(), dy.typed_data());
  memory scratchpad(c.scratchpad, Engine());
  c.primitive.execute(stream, {{DNNL_ARG_DIFF_SRC, diff_src},
                               {DNNL_ARG_WEIGHTS, kernel},
                               {DNNL_ARG_DIFF_DST, diff_dst},
                               {DNNL_ARG_SCRATCHPAD, scratchpad}});
  stream.wait();
  return ffi::Error::Success();
}

ffi::Error BackwardWeightsUnchecked(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                           ffi::ResultBuffer<ffi::F32> dw, ffi::Span<const int64_t> stride,
                           ffi::Span<const int64_t> dilation, ffi::Span<const int64_t> pad_lo,
                           ffi::Span<const int64_t> pad_hi, int64_t winograd) {
  auto xd = x.dimensions(), wd = dw->dimensions();
  if (int tile = WinogradTile(winograd, wd[0], wd[1], xd[1], xd[2], wd[2], wd[3], stride,
                              dilation, pad_lo, pad_hi)) {
    (tile == 4 ? winograd::WeightGradient<winograd::F4x3>
               : winograd::WeightGradient<winograd::F2x3>)(
        x.typed_data(), dy.typed_data(), dw->typed_data(), xd[0], xd[1], xd[2], wd[2], wd[3]);
    ++winograd_calls[tile];
    return ffi::Error::Success();
  }
  Geometry g = MakeGeometry(xd, wd, dy.dimensions(), stride, dilation, pad_lo, pad_hi);
  Cached c = Lookup(Key("backward_weights", g), [&] {
    auto desc = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, Activations(g.src), AnyKernel(g.wei),
        Activations(g.dst), g.strides, g.dilates, g.pad_l, g.pad_r, ForwardDesc(g),
        Attributes());
    return Cached{dnnl::primitive(desc), desc.diff_weights_desc(), desc.scratchpad_desc()};
  });
  dnnl::stream stream(Engine());
  memory src(Activations(g.src), Engine(), x.typed_data());
  memory user_kernel(UserKernel(g.wei), Engine(), dw->typed_data());
  bool reorder = c.kernel != user_kernel.get_desc();
  memory kernel = reorder ? memory(c.kernel, Engine()) : user_kernel;
  memory diff_dst(Activations(g.dst), Engine(), dy.typed_data());
  memory scratchpad(c.scratchpad, Engine());
  c.primitive.execute(stream, {{DNNL_ARG_SRC, src},
                               {DNNL_ARG_DIFF_WEIGHTS, kernel},
                               {DNNL_ARG_DIFF_DST, diff_dst},
                               {DNNL_ARG_SCRATCHPAD, scratchpad}});
  if (reorder) Reorder(kernel, user_kernel, stream);
  stream.wait();
  return ffi::Error::Success();
}

// oneDNN reports failures as C++ exceptions, which must not cross the FFI's C boundary.
template <typename... Args>
ffi::Error Checked(ffi::Error (*run)(Args...), Args... args) {
  try {
    return run(args...);
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  }
}

#define CNN_JAX_CHECKED(NAME)                                                                \
  ffi::Error NAME(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,                          \
                  ffi::ResultBuffer<ffi::F32> out, ffi::Span<const int64_t> stride,          \
                  ffi::Span<const int64_t> dilation, ffi::Span<const int64_t> pad_lo,        \
                  ffi::Span<const int64_t> pad_hi, int64_t winograd) {                       \
    return Checked(&NAME##Unchecked, a, b, out, stride, dilation, pad_lo, pad_hi, winograd); \
  }
CNN_JAX_CHECKED(Forward)
CNN_JAX_CHECKED(BackwardData)
CNN_JAX_CHECKED(BackwardWeights)

}  // namespace

#define CNN_JAX_CONV_BINDING                            \
  ffi::Ffi::Bind()                                      \
      .Arg<ffi::Buffer<ffi::F32>>()                     \
      .Arg<ffi::Buffer<ffi::F32>>()                     \
      .Ret<ffi::Buffer<ffi::F32>>()                     \
      .Attr<ffi::Span<const int64_t>>("stride")         \
      .Attr<ffi::Span<const int64_t>>("dilation")       \
      .Attr<ffi::Span<const int64_t>>("pad_lo")         \
      .Attr<ffi::Span<const int64_t>>("pad_hi")         \
      .Attr<int64_t>("winograd")

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxOnednnConvForward, Forward, CNN_JAX_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxOnednnConvBackwardData, BackwardData, CNN_JAX_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxOnednnConvBackwardWeights, BackwardWeights,
                              CNN_JAX_CONV_BINDING);

// The identity as a call XLA cannot fuse through (cnn_jax.native.materialize): its
// operand is computed once, into memory, and every consumer reads that memory instead of
// recomputing the operand's elementwise chain. The result aliases the operand
// (input_output_aliases), so normally the buffers are the same and nothing is copied.
namespace {
ffi::Error Materialize(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  if (y->untyped_data() != x.untyped_data()) {
    std::memcpy(y->untyped_data(), x.untyped_data(), x.size_bytes());
  }
  return ffi::Error::Success();
}
}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxMaterialize, Materialize,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());

// BatchNorm's channel sums (channel_sums.h) over x viewed as (rows, C): C is x's last
// dimension, a multiple of 8 (cnn_jax.native.ffi checks).
namespace {
int64_t Rows(const ffi::Buffer<ffi::F32>& x) {
  return static_cast<int64_t>(x.element_count()) / x.dimensions().back();
}

ffi::Error ChannelMoments(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> mean,
                          ffi::ResultBuffer<ffi::F32> var) {
  channel_sums::Moments(x.typed_data(), Rows(x), static_cast<int>(x.dimensions().back()),
                        mean->typed_data(), var->typed_data());
  return ffi::Error::Success();
}

ffi::Error ChannelGradSums(ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> x,
                           ffi::Buffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> sum_g,
                           ffi::ResultBuffer<ffi::F32> sum_g_centred) {
  channel_sums::GradSums(g.typed_data(), x.typed_data(), mean.typed_data(), Rows(x),
                         static_cast<int>(x.dimensions().back()), sum_g->typed_data(),
                         sum_g_centred->typed_data());
  return ffi::Error::Success();
}
}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxChannelMoments, ChannelMoments,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxChannelGradSums, ChannelGradSums,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

extern "C" int64_t CnnJaxWinogradCalls(int64_t tile) {
  return tile == 2 || tile == 4 ? winograd_calls[tile].load() : 0;
}
