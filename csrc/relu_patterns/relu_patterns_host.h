// Host-side pieces of the ReLU pattern ops shared by the CPU and CUDA entry
// points: input validation (so both backends raise the same errors) and the
// region-system assembly, which is batched matrix products plus elementwise
// sign work and so is written once on ATen ops for every device.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "relu_patterns/relu_patterns.h"

// The ops of this family, listed once: the CPU and CUDA files register a
// kernel for each (common/registration.h); the schemas are in relu_patterns_schema.cpp.
#define MANIFOLD_EXT_RELU_PATTERNS_OPS(X) \
  X(activation_patterns)                  \
  X(unpack_patterns)                      \
  X(pack_patterns)                        \
  X(hamming_distance)                     \
  X(hamming_topk)                         \
  X(region_system)

namespace manifold_ext {
namespace relu_patterns {

// Sizes of a ReLU MLP given as weight/bias lists.
struct NetworkShape {
  int64_t input_dim = 0;
  std::vector<int64_t> layer_units;  // units of every listed layer, in order
  int64_t hidden_units = 0;          // sum over the hidden layers
  int64_t words = 0;                 // int64 words of a packed pattern
};

// Checks `weights[j]` [h_j, h_{j-1}] and `biases[j]` [h_j] (h_0 = input_dim).
// `hidden_layers` is how many of the listed layers carry a ReLU (all of them
// for activation_patterns, all but the last, the output layer, for region_system).
inline NetworkShape check_network(at::TensorList weights, at::TensorList biases, int64_t hidden_layers,
                                  const char* op) {
  TORCH_CHECK_VALUE(weights.size() == biases.size(), op, ": got ", weights.size(), " weight matrices but ",
                    biases.size(), " bias vectors; pass one bias per layer");
  TORCH_CHECK_VALUE(!weights.empty(), op, ": the network needs at least one layer, got empty weight lists");
  NetworkShape shape;
  const at::Tensor& first = weights[0];
  for (size_t j = 0; j < weights.size(); ++j) {
    const at::Tensor& w = weights[j];
    const at::Tensor& b = biases[j];
    TORCH_CHECK_VALUE(w.dim() == 2, op, ": weights[", j, "] must be a matrix [out_features, in_features], got shape ",
                      w.sizes());
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == w.size(0), op, ": biases[", j, "] must have shape [", w.size(0),
                      "] to match weights[", j, "] of shape ", w.sizes(), ", got ", b.sizes());
    TORCH_CHECK_VALUE(at::isFloatingType(w.scalar_type()), op, ": weights must be floating point, got ",
                      w.scalar_type(), " for weights[", j, "]");
    TORCH_CHECK_VALUE(w.scalar_type() == first.scalar_type() && b.scalar_type() == first.scalar_type(), op,
                      ": all weights and biases must share one dtype; weights[0] is ", first.scalar_type(),
                      " but layer ", j, " has weights ", w.scalar_type(), " and biases ", b.scalar_type());
    TORCH_CHECK_VALUE(w.device() == first.device() && b.device() == first.device(), op,
                      ": all weights and biases must be on one device; weights[0] is on ", first.device(),
                      " but layer ", j, " has weights on ", w.device(), " and biases on ", b.device());
    if (j == 0) {
      shape.input_dim = w.size(1);
    } else {
      TORCH_CHECK_VALUE(w.size(1) == weights[j - 1].size(0), op, ": weights[", j, "] takes ", w.size(1),
                        " inputs but layer ", j - 1, " has ", weights[j - 1].size(0), " units (shapes ",
                        weights[j - 1].sizes(), " then ", w.sizes(), ")");
    }
    shape.layer_units.push_back(w.size(0));
    if (static_cast<int64_t>(j) < hidden_layers) shape.hidden_units += w.size(0);
  }
  shape.words = words_for_units(shape.hidden_units);
  return shape;
}

inline void check_inputs_x(const at::Tensor& x, at::TensorList weights, const NetworkShape& shape, const char* op) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must have shape [N, d], got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.size(1) == shape.input_dim, op, ": x has ", x.size(1), " features but weights[0] expects ",
                    shape.input_dim, " (weights[0] has shape ", weights[0].sizes(), ")");
  TORCH_CHECK_VALUE(x.scalar_type() == weights[0].scalar_type(), op, ": x and the weights must share one dtype, got x ",
                    x.scalar_type(), " and weights ", weights[0].scalar_type());
  TORCH_CHECK_VALUE(x.device() == weights[0].device(), op, ": x and the weights must be on one device, got x on ",
                    x.device(), " and weights on ", weights[0].device());
}

inline void check_packed(const at::Tensor& packed, const char* name, const char* op) {
  TORCH_CHECK_VALUE(packed.scalar_type() == at::kLong, op, ": ", name,
                    " must be packed patterns of dtype int64 (see activation_patterns), got ", packed.scalar_type());
  TORCH_CHECK_VALUE(packed.dim() == 2, op, ": ", name, " must have shape [N, words], got shape ", packed.sizes());
}

inline void check_hamming_pair(const at::Tensor& a, const at::Tensor& b, const char* name_a, const char* name_b,
                               const char* op) {
  check_packed(a, name_a, op);
  check_packed(b, name_b, op);
  TORCH_CHECK_VALUE(a.size(1) == b.size(1), op, ": ", name_a, " and ", name_b,
                    " must have the same number of words (patterns of the same network), got ", a.sizes(), " and ",
                    b.sizes());
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": ", name_a, " and ", name_b, " must be on one device, got ",
                    a.device(), " and ", b.device());
}

inline void check_topk(const at::Tensor& query, const at::Tensor& ref, int64_t k) {
  check_hamming_pair(query, ref, "query", "ref", "hamming_topk");
  TORCH_CHECK_VALUE(k >= 0 && k <= ref.size(0),
                    "hamming_topk: k must be in [0, number of reference patterns = ", ref.size(0), "], got k = ", k);
}

// Bits past the last unit must be 0 (the packing convention): a set one means
// the patterns belong to a wider network (or are not patterns), and ignoring
// it would silently drop a unit.
inline void check_no_bits_beyond(const at::Tensor& packed, int64_t num_units, const char* name, const char* op) {
  const int64_t used_in_last_word = num_units % kBitsPerWord;
  if (used_in_last_word == 0 || packed.size(0) == 0) return;
  const at::Tensor last_word = packed.select(1, packed.size(1) - 1);
  const at::Tensor beyond = at::bitwise_right_shift(last_word, used_in_last_word).ne(0);
  if (!beyond.any().item<bool>()) return;
  const int64_t row = beyond.nonzero().select(1, 0)[0].item<int64_t>();
  TORCH_CHECK_VALUE(false, op, ": ", name, " row ", row, " has bits set beyond unit ", num_units - 1, " (", num_units,
                    " units fill ", used_in_last_word,
                    " bits of the last int64 word; the rest must be 0): patterns "
                    "of a network with more units?");
}

inline void check_unpack(const at::Tensor& packed, int64_t num_units) {
  check_packed(packed, "packed", "unpack_patterns");
  TORCH_CHECK_VALUE(num_units >= 0, "unpack_patterns: num_units must be >= 0, got ", num_units);
  TORCH_CHECK_VALUE(words_for_units(num_units) == packed.size(1), "unpack_patterns: ", num_units, " units need ",
                    words_for_units(num_units), " int64 words per pattern, but packed has shape ", packed.sizes());
  check_no_bits_beyond(packed, num_units, "packed", "unpack_patterns");
}

// Eq. 3 gives a unit's bit from the sign of its pre-activation; a NaN has no
// sign (pre > 0 is false, so it would read as inactive and the ReLU would pass
// 0 to the next layer, whose bits would look plausible). The pattern of such a
// sample is undefined: refuse it, naming the first NaN. One sum over the layer
// finds out cheaply (a NaN, or an inf of each sign, makes it NaN); only then
// are the elements looked at.
inline void check_preactivations(const at::Tensor& pre, int64_t layer, int64_t layer_offset, const char* op) {
  if (pre.numel() == 0 || !std::isnan(pre.sum().item<double>())) return;
  const at::Tensor nan = at::isnan(pre);
  if (!nan.any().item<bool>()) return;  // only infinities of both signs
  const at::Tensor where = nan.nonzero();
  const int64_t sample = where[0][0].item<int64_t>();
  const int64_t unit = where[0][1].item<int64_t>();
  TORCH_CHECK_VALUE(false, op, ": the pre-activation of hidden unit ", layer_offset + unit, " (unit ", unit,
                    " of layer ", layer, ") is NaN for sample ", sample,
                    ", so its pattern bit is undefined; check x, the weights and the biases for NaN and inf");
}

inline void check_pack(const at::Tensor& bits) {
  TORCH_CHECK_VALUE(bits.scalar_type() == at::kBool, "pack_patterns: bits must be a bool tensor [N, H], got dtype ",
                    bits.scalar_type());
  TORCH_CHECK_VALUE(bits.dim() == 2, "pack_patterns: bits must have shape [N, H], got shape ", bits.sizes());
}

// ---------------------------------------------------------------------------
// region_system (Eq. 5 and the affine map G of Section 2.3).
//
// For a pattern s with per-layer blocks s_j, W_hat_1 = W_1, b_hat_1 = b_1 and
//   W_hat_j = W_j diag(s_{j-1}) W_hat_{j-1},  b_hat_j = W_j diag(s_{j-1}) b_hat_{j-1} + b_j,
// the region is A x <= c with A_j = diag(s'_j) W_hat_j, c_j = -diag(s'_j) b_hat_j and
// s' = 1 - 2 s (+1 inactive, -1 active): unit g keeps its sign on the closed
// half-space. The network output on the region is
//   G(x) = W_{L+1} diag(s_L) W_hat_L x + W_{L+1} diag(s_L) b_hat_L + b_{L+1}.
// Each layer is one batched matrix product over all patterns.
// ---------------------------------------------------------------------------

// Bits of packed patterns [P, words] as 0/1 values of `dtype`, [P, units].
inline at::Tensor unpacked_as(const at::Tensor& patterns, int64_t units, at::ScalarType dtype) {
  const at::Tensor shifts = at::arange(kBitsPerWord, patterns.options());                               // [64]
  const at::Tensor bits = at::bitwise_and(at::bitwise_right_shift(patterns.unsqueeze(-1), shifts), 1);  // [P, W, 64]
  return bits.reshape({patterns.size(0), patterns.size(1) * kBitsPerWord}).narrow(1, 0, units).to(dtype);
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> region_system_impl(at::TensorList weights,
                                                                                     at::TensorList biases,
                                                                                     const at::Tensor& patterns) {
  constexpr const char* op = "region_system";
  TORCH_CHECK_VALUE(weights.size() >= 2, op,
                    ": weights must list the hidden layers followed by the output layer (at least 2 layers), got ",
                    weights.size());
  const int64_t hidden_layers = static_cast<int64_t>(weights.size()) - 1;
  const NetworkShape shape = check_network(weights, biases, hidden_layers, op);
  check_packed(patterns, "patterns", op);
  TORCH_CHECK_VALUE(patterns.size(1) == shape.words, op, ": the network has ", shape.hidden_units,
                    " hidden units, so patterns need ", shape.words, " int64 words each, got shape ", patterns.sizes());
  TORCH_CHECK_VALUE(patterns.device() == weights[0].device(), op, ": patterns and weights must be on one device, got ",
                    patterns.device(), " and ", weights[0].device());
  check_no_bits_beyond(patterns, shape.hidden_units, "patterns", op);

  const int64_t num_patterns = patterns.size(0);
  const int64_t d = shape.input_dim;
  const auto dtype = weights[0].scalar_type();
  const auto options = weights[0].options();
  const at::Tensor active = unpacked_as(patterns, shape.hidden_units, dtype);  // [P, H] s
  const at::Tensor row_sign = 1 - 2 * active;                                  // [P, H] s'
  at::Tensor A = at::empty({num_patterns, shape.hidden_units, d}, options);    // [P, H, d]
  at::Tensor c = at::empty({num_patterns, shape.hidden_units}, options);       // [P, H]

  at::Tensor w_hat = weights[0].unsqueeze(0).expand({num_patterns, shape.layer_units[0], d});  // [P, h_1, d]
  at::Tensor b_hat = biases[0].unsqueeze(0).expand({num_patterns, shape.layer_units[0]});      // [P, h_1]
  int64_t offset = 0;
  for (int64_t j = 0; j <= hidden_layers; ++j) {
    if (j > 0) {
      // W_j diag(s_{j-1}): mask the columns of W_j by the previous layer's bits.
      const int64_t prev_units = shape.layer_units[j - 1];
      const at::Tensor prev_active = active.narrow(1, offset - prev_units, prev_units);  // [P, h_{j-1}]
      const at::Tensor masked = weights[j].unsqueeze(0) * prev_active.unsqueeze(1);      // [P, h_j, h_{j-1}]
      w_hat = at::bmm(masked, w_hat);                                                    // [P, h_j, d]
      b_hat = at::bmm(masked, b_hat.unsqueeze(-1)).squeeze(-1) + biases[j];              // [P, h_j]
    }
    if (j == hidden_layers) break;  // the output layer has no inequality rows
    const int64_t units = shape.layer_units[j];
    const at::Tensor sign = row_sign.narrow(1, offset, units);  // [P, h_j]
    A.narrow(1, offset, units).copy_(w_hat * sign.unsqueeze(-1));
    c.narrow(1, offset, units).copy_(-b_hat * sign);
    offset += units;
  }
  return {A, c, w_hat.contiguous(), b_hat.contiguous()};
}

}  // namespace relu_patterns
}  // namespace manifold_ext
