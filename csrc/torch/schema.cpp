// Schemas of the egovlpv2 custom ops (contract: docs/OPS.md). The CPU library holds them; the
// CUDA library only adds CUDA kernels for the same names.
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY(egovlpv2, m) {
  m.def(
      "divided_space_time_attention(Tensor qkv, int num_heads, int num_frames, bool temporal, "
      "float scale) -> (Tensor out, Tensor softmax_lse)");
  m.def(
      "divided_space_time_attention_backward(Tensor grad_out, Tensor qkv, Tensor out, "
      "Tensor softmax_lse, int num_heads, int num_frames, bool temporal, float scale) "
      "-> Tensor grad_qkv");
  m.def(
      "gated_cross_attention(Tensor q, Tensor k, Tensor v, Tensor? key_mask, "
      "Tensor proj_weight, Tensor? proj_bias, Tensor gate, Tensor residual, int num_heads, "
      "float scale) -> (Tensor out, Tensor attn, Tensor softmax_lse)");
  m.def(
      "gated_cross_attention_backward(Tensor grad_attn, Tensor q, Tensor k, Tensor v, "
      "Tensor? key_mask, Tensor attn, Tensor softmax_lse, int num_heads, float scale) "
      "-> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
}
