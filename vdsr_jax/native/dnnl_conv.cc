// 3x3 'SAME' convolutions of VDSR on CPU through oneDNN, as XLA FFI handlers.
//
// One handler per convolution of a training step, all float32, NHWC
// activations and HWIO kernels (the layouts of vdsr_jax.conv):
//   VdsrDnnlConvFwd(x[N,H,W,Ci], w[3,3,Ci,Co])      -> y[N,H,W,Co]
//   VdsrDnnlConvBwdData(dy[N,H,W,Co], w[3,3,Ci,Co]) -> dx[N,H,W,Ci]
//   VdsrDnnlConvBwdWeights(x[N,H,W,Ci], dy[N,H,W,Co]) -> dw[3,3,Ci,Co]
// and the forward of a hidden layer with its bias and ReLU fused (oneDNN
// post-op), which saves XLA one pass over the activations:
//   VdsrDnnlConvBiasReluFwd(x[N,H,W,Ci], w[3,3,Ci,Co], b[Co]) -> y[N,H,W,Co]
// (A spatial mask as a binary post-op would run oneDNN's reference
// implementation, ~300x slower in oneDNN 3.2, so masks stay in XLA.)
// Stride 1, zero padding 1 on every side. oneDNN picks its fastest kernel
// and weight layout (format_tag::any); the small weight tensors are
// reordered from/to HWIO on every call. Primitives are cached per shape.
// Every call uses its own stream and scratchpad, so concurrent calls from
// XLA's threads are safe.

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

dnnl::engine& Engine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

// The primitives of one layer shape (N, H, W, Ci, Co).
struct LayerPrimitives {
  memory::desc src, dst, user_weights;
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd;
  dnnl::convolution_backward_weights bwd_weights;
  // Forward with bias and a ReLU post-op.
  memory::desc bias;
  dnnl::convolution_forward::primitive_desc fused_pd;
  dnnl::convolution_forward fused;
};

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>;

std::shared_ptr<const LayerPrimitives> Primitives(int64_t n, int64_t h,
                                                  int64_t w, int64_t ci,
                                                  int64_t co) {
  static std::mutex mu;
  static std::map<Key, std::shared_ptr<const LayerPrimitives>>* cache =
      new std::map<Key, std::shared_ptr<const LayerPrimitives>>();
  const Key key{n, h, w, ci, co};
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(key);
  if (it != cache->end()) return it->second;

  auto p = std::make_shared<LayerPrimitives>();
  const memory::dims strides{1, 1}, pad{1, 1};
  p->src = memory::desc({n, ci, h, w}, dt::f32, tag::nhwc);
  p->dst = memory::desc({n, co, h, w}, dt::f32, tag::nhwc);
  p->user_weights = memory::desc({co, ci, 3, 3}, dt::f32, tag::hwio);
  const memory::desc any_weights({co, ci, 3, 3}, dt::f32, tag::any);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  p->fwd_pd = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training,
      dnnl::algorithm::convolution_direct, p->src, any_weights, p->dst,
      strides, pad, pad, attr);
  p->fwd = dnnl::convolution_forward(p->fwd_pd);
  p->bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, p->src, any_weights,
      p->dst, strides, pad, pad, p->fwd_pd, attr);
  p->bwd_data = dnnl::convolution_backward_data(p->bwd_data_pd);
  p->bwd_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, p->src, any_weights,
      p->dst, strides, pad, pad, p->fwd_pd, attr);
  p->bwd_weights = dnnl::convolution_backward_weights(p->bwd_weights_pd);
  p->bias = memory::desc({co}, dt::f32, tag::a);
  dnnl::post_ops relu;
  relu.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
  dnnl::primitive_attr fused_attr;
  fused_attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  fused_attr.set_post_ops(relu);
  p->fused_pd = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training,
      dnnl::algorithm::convolution_direct, p->src, any_weights, p->bias,
      p->dst, strides, pad, pad, fused_attr);
  p->fused = dnnl::convolution_forward(p->fused_pd);
  cache->emplace(key, p);
  return p;
}

// Checks shapes: activations (N, H, W, C) and a (3, 3, Ci, Co) kernel.
ffi::Error CheckShapes(ffi::Span<const int64_t> act, int64_t act_channels,
                       ffi::Span<const int64_t> kernel) {
  if (act.size() != 4 || kernel.size() != 4 || kernel[0] != 3 ||
      kernel[1] != 3 || act[3] != act_channels) {
    return ffi::Error::InvalidArgument(
        "vdsr dnnl conv: expected (N, H, W, C) activations and a (3, 3, Cin, "
        "Cout) kernel with matching channels");
  }
  return ffi::Error::Success();
}

memory Scratchpad(const memory::desc& desc) { return memory(desc, Engine()); }

// Weights in the layout `desc` wants, reordered from HWIO if needed.
memory WeightsFor(const memory::desc& desc, const memory& user,
                  dnnl::stream& stream) {
  if (desc == user.get_desc()) return user;
  memory out(desc, Engine());
  dnnl::reorder(user, out).execute(stream, const_cast<memory&>(user), out);
  return out;
}

template <typename F>
ffi::Error Guarded(F&& body) {
  try {
    return body();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
}

// Runs a forward primitive (plain, or with bias and ReLU when `b` is given)
// after checking the shapes.
ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   const ffi::Buffer<ffi::F32>* b,
                   ffi::ResultBuffer<ffi::F32> y) {
  return Guarded([&]() -> ffi::Error {
    const auto xd = x.dimensions(), wd = w.dimensions();
    if (auto err = CheckShapes(xd, wd.size() == 4 ? wd[2] : -1, wd);
        err.failure()) {
      return err;
    }
    if (b != nullptr &&
        (b->dimensions().size() != 1 || b->dimensions()[0] != wd[3])) {
      return ffi::Error::InvalidArgument(
          "vdsr dnnl conv: expected a (Cout,) bias");
    }
    auto p = Primitives(xd[0], xd[1], xd[2], wd[2], wd[3]);
    const auto& pd = b != nullptr ? p->fused_pd : p->fwd_pd;
    const auto& prim = b != nullptr ? p->fused : p->fwd;
    dnnl::stream stream(Engine());
    memory src(p->src, Engine(), const_cast<float*>(x.typed_data()));
    memory user_w(p->user_weights, Engine(), const_cast<float*>(w.typed_data()));
    memory dst(p->dst, Engine(), y->typed_data());
    memory weights = WeightsFor(pd.weights_desc(), user_w, stream);
    memory scratch = Scratchpad(pd.scratchpad_desc());
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src},
                                         {DNNL_ARG_WEIGHTS, weights},
                                         {DNNL_ARG_DST, dst},
                                         {DNNL_ARG_SCRATCHPAD, scratch}};
    if (b != nullptr) {
      args.emplace(DNNL_ARG_BIAS, memory(p->bias, Engine(),
                                         const_cast<float*>(b->typed_data())));
    }
    prim.execute(stream, args);
    stream.wait();
    return ffi::Error::Success();
  });
}

ffi::Error ConvFwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y) {
  return Forward(x, w, nullptr, y);
}

ffi::Error ConvBiasReluFwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                           ffi::Buffer<ffi::F32> b,
                           ffi::ResultBuffer<ffi::F32> y) {
  return Forward(x, w, &b, y);
}

ffi::Error ConvBwdData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> dx) {
  return Guarded([&]() -> ffi::Error {
    const auto dyd = dy.dimensions(), wd = w.dimensions();
    if (auto err = CheckShapes(dyd, wd.size() == 4 ? wd[3] : -1, wd);
        err.failure()) {
      return err;
    }
    auto p = Primitives(dyd[0], dyd[1], dyd[2], wd[2], wd[3]);
    dnnl::stream stream(Engine());
    memory diff_dst(p->dst, Engine(), const_cast<float*>(dy.typed_data()));
    memory user_w(p->user_weights, Engine(), const_cast<float*>(w.typed_data()));
    memory diff_src(p->src, Engine(), dx->typed_data());
    memory weights = WeightsFor(p->bwd_data_pd.weights_desc(), user_w, stream);
    memory scratch = Scratchpad(p->bwd_data_pd.scratchpad_desc());
    p->bwd_data.execute(stream, {{DNNL_ARG_DIFF_DST, diff_dst},
                                 {DNNL_ARG_WEIGHTS, weights},
                                 {DNNL_ARG_DIFF_SRC, diff_src},
                                 {DNNL_ARG_SCRATCHPAD, scratch}});
    stream.wait();
    return ffi::Error::Success();
  });
}

ffi::Error ConvBwdWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw) {
  return Guarded([&]() -> ffi::Error {
    const auto xd = x.dimensions(), dyd = dy.dimensions(),
               dwd = dw->dimensions();
    if (xd.size() != 4 || dyd.size() != 4 || dwd.size() != 4 ||
        xd[0] != dyd[0] || xd[1] != dyd[1] || xd[2] != dyd[2] ||
        dwd[0] != 3 || dwd[1] != 3 || dwd[2] != xd[3] || dwd[3] != dyd[3]) {
      return ffi::Error::InvalidArgument(
          "vdsr dnnl conv: expected x (N, H, W, Cin), dy (N, H, W, Cout) and "
          "a (3, 3, Cin, Cout) result");
    }
    auto p = Primitives(xd[0], xd[1], xd[2], xd[3], dyd[3]);
    dnnl::stream stream(Engine());
    memory src(p->src, Engine(), const_cast<float*>(x.typed_data()));
    memory diff_dst(p->dst, Engine(), const_cast<float*>(dy.typed_data()));
    memory user_dw(p->user_weights, Engine(), dw->typed_data());
    const memory::desc want = p->bwd_weights_pd.diff_weights_desc();
    memory diff_weights =
        want == p->user_weights ? user_dw : memory(want, Engine());
    memory scratch = Scratchpad(p->bwd_weights_pd.scratchpad_desc());
    p->bwd_weights.execute(stream, {{DNNL_ARG_SRC, src},
                                    {DNNL_ARG_DIFF_DST, diff_dst},
                                    {DNNL_ARG_DIFF_WEIGHTS, diff_weights},
                                    {DNNL_ARG_SCRATCHPAD, scratch}});
    if (!(want == p->user_weights)) {
      dnnl::reorder(diff_weights, user_dw)
          .execute(stream, diff_weights, user_dw);
    }
    stream.wait();
    return ffi::Error::Success();
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(VdsrDnnlConvFwd, ConvFwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(VdsrDnnlConvBiasReluFwd, ConvBiasReluFwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(VdsrDnnlConvBwdData, ConvBwdData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(VdsrDnnlConvBwdWeights, ConvBwdWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// Which implementation oneDNN chose for a shape, for logs and tests:
// "fwd|bwd_data|bwd_weights|fused_fwd" implementation names.
extern "C" int VdsrDnnlImplInfo(int64_t n, int64_t h, int64_t w, int64_t ci,
                                int64_t co, char* out, int64_t size) {
  try {
    auto p = Primitives(n, h, w, ci, co);
    std::string s = std::string(p->fwd_pd.impl_info_str()) + "|" +
                    p->bwd_data_pd.impl_info_str() + "|" +
                    p->bwd_weights_pd.impl_info_str() + "|" +
                    p->fused_pd.impl_info_str();
    snprintf(out, size, "%s", s.c_str());
    return 0;
  } catch (const dnnl::error& e) {
    snprintf(out, size, "%s", e.what());
    return 1;
  }
}
