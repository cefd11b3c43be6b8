// oneDNN's convolution implementations for the CIFAR ResNets' 3x3 layers, by activation layout.
//
// For each stage's stride-1 convolution (batch 128; 16 channels at 32x32, 32 at 16x16, 64 at
// 8x8) it times oneDNN's forward, backward-data and backward-weights primitives with the
// activations in NHWC (what cnn_jax.native passes, as XLA holds them), in oneDNN's blocked
// nChw8c (nChw16c has only the reference implementation on AVX2: ~13 s a call), and in the
// layout oneDNN picks (`any`), and the reorder of an NHWC input into that layout: what a
// handler would pay to use a blocked implementation. Kernels are
// `any` throughout, as in cnn_jax/native/csrc/onednn_conv.cc. Build and run from the repository root
// (docs/benchmarks-history.md, 2026-11-25, a757273):
//
//   B=$(mktemp -d); P=.venv; g++ -O2 -std=c++17 cnn_jax/native/bench/onednn_layouts.cc -I$P/include -L$P/lib -ldnnl \
//       -Wl,-rpath,$P/lib -o $B/onednn_layouts && $B/onednn_layouts
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "oneapi/dnnl/dnnl.hpp"
using namespace dnnl;
using tag = memory::format_tag;
engine eng(engine::kind::cpu, 0);

double now(){return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();}

template<class F> double timeit(F f, int reps=10){ f(); f(); double t0=now(); for(int i=0;i<reps;i++) f(); return (now()-t0)/reps*1e3;}

void fill(memory& m){ float* p=(float*)m.get_data_handle(); size_t n=m.get_desc().get_size()/4; for(size_t i=0;i<n;i++) p[i]=(rand()%100)/100.f-0.5f;}

void run(int N,int C,int O,int H,int S, tag act, bool any_act){
  int OH=(H+2-3)/S+1; int pl=1, pr=(S==1)?1:0;
  if(S==2){pl=0;pr=1;}
  memory::dims src{N,C,H,H}, wei{O,C,3,3}, dst{N,O,OH,OH}, st{S,S}, dil{0,0}, pL{pl,pl}, pR{pr,pr};
  memory::desc usrc(src, memory::data_type::f32, tag::nhwc), udst(dst, memory::data_type::f32, tag::nhwc);
  memory::desc asrc(src, memory::data_type::f32, any_act?tag::any:act), adst(dst, memory::data_type::f32, any_act?tag::any:act);
  memory::desc awei(wei, memory::data_type::f32, tag::any);
  primitive_attr attr; attr.set_scratchpad_mode(scratchpad_mode::user);
  stream s(eng);
  auto fpd = convolution_forward::primitive_desc(eng, prop_kind::forward_training, algorithm::convolution_direct, asrc, awei, adst, st, dil, pL, pR, attr);
  auto bdpd = convolution_backward_data::primitive_desc(eng, algorithm::convolution_direct, asrc, awei, adst, st, dil, pL, pR, fpd, attr);
  auto bwpd = convolution_backward_weights::primitive_desc(eng, algorithm::convolution_direct, asrc, awei, adst, st, dil, pL, pR, fpd, attr);
  memory x(fpd.src_desc(), eng), w(fpd.weights_desc(), eng), y(fpd.dst_desc(), eng);
  memory dx(bdpd.diff_src_desc(), eng), wb(bdpd.weights_desc(), eng), dy(bdpd.diff_dst_desc(), eng);
  memory x2(bwpd.src_desc(), eng), dw(bwpd.diff_weights_desc(), eng), dy2(bwpd.diff_dst_desc(), eng);
  fill(x); fill(w); fill(dy); fill(wb); fill(x2); fill(dy2);
  memory sp1(fpd.scratchpad_desc(), eng), sp2(bdpd.scratchpad_desc(), eng), sp3(bwpd.scratchpad_desc(), eng);
  convolution_forward f(fpd); convolution_backward_data bd(bdpd); convolution_backward_weights bw(bwpd);
  double flops = 2.0*N*O*OH*OH*C*9/1e9;
  double tf=timeit([&]{f.execute(s,{{DNNL_ARG_SRC,x},{DNNL_ARG_WEIGHTS,w},{DNNL_ARG_DST,y},{DNNL_ARG_SCRATCHPAD,sp1}}); s.wait();});
  double tb=timeit([&]{bd.execute(s,{{DNNL_ARG_DIFF_SRC,dx},{DNNL_ARG_WEIGHTS,wb},{DNNL_ARG_DIFF_DST,dy},{DNNL_ARG_SCRATCHPAD,sp2}}); s.wait();});
  double tw=timeit([&]{bw.execute(s,{{DNNL_ARG_SRC,x2},{DNNL_ARG_DIFF_WEIGHTS,dw},{DNNL_ARG_DIFF_DST,dy2},{DNNL_ARG_SCRATCHPAD,sp3}}); s.wait();});
  // reorder cost nhwc -> chosen src layout
  double tr=0;
  if (fpd.src_desc()!=usrc){ memory u(usrc,eng); fill(u); memory t(fpd.src_desc(),eng); reorder r(u,t); tr=timeit([&]{r.execute(s,u,t); s.wait();});}
  printf("N%d C%d O%d H%d s%d %-8s fwd %6.2f ms (%5.1f GF/s) %-22s bwd_data %6.2f (%5.1f) %-26s bwd_w %6.2f (%5.1f) %-16s reorder_src %.2f\n",
    N,C,O,H,S, any_act?"any":(act==tag::nhwc?"nhwc":"blocked"), tf, flops/tf*1e3, fpd.impl_info_str(), tb, flops/tb*1e3, bdpd.impl_info_str(), tw, flops/tw*1e3, bwpd.impl_info_str(), tr);
}
int main(){
  int N=128;
  for (auto cfg : std::vector<std::vector<int>>{{16,16,32,1},{32,32,16,1},{64,64,8,1}}){
    run(N,cfg[0],cfg[1],cfg[2],cfg[3],tag::nhwc,false);
    run(N,cfg[0],cfg[1],cfg[2],cfg[3],tag::nChw8c,false);
    run(N,cfg[0],cfg[1],cfg[2],cfg[3],tag::any,true);
  }
}
