// Autograd of the differentiable clustr_fast ops, registered once for every device
// (dispatch key Autograd). Each forward calls the op below autograd, so the device's kernel
// (C++ CPU, CUDA, or the Triton or reference kernel clustr_fast._backend registered for the
// device) runs through the dispatcher; each backward calls the op's backward op the same way.
// The formulas are in the op docstrings (clustr_fast/ops/<op>.py). Not twice differentiable.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace clustr_fast {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<Tensor>;

template <class Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// An output without gradient arrives undefined (materialize_grads is off): its inputs get none.
variable_list no_grads(size_t n) { return variable_list(n); }

OptTensor optional_of(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// ---- pairwise_sqdist: out = ||x_i||^2 + ||c_k||^2 - 2 x_i.c_k (clamped at 0)
struct PairwiseSqdist : torch::autograd::Function<PairwiseSqdist> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& c, int64_t precision) {
    static auto op = find_op<Tensor(const Tensor&, const Tensor&, int64_t)>("clustr_fast::pairwise_sqdist");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({x, c});
    ctx->saved_data["precision"] = precision;
    return op.call(x, c, precision);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = find_op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, int64_t)>(
        "clustr_fast::pairwise_sqdist_backward");
    if (!grads[0].defined()) return no_grads(3);
    const auto saved = ctx->get_saved_variables();
    auto [gx, gc] = op.call(grads[0].contiguous(), saved[0], saved[1], ctx->saved_data["precision"].toInt());
    return {gx, gc, Tensor()};
  }
};

Tensor pairwise_sqdist_autograd(const Tensor& x, const Tensor& c, int64_t precision) {
  return PairwiseSqdist::apply(x, c, precision);
}

// ---- soft_cluster_logits: (out [N, L], idx [N, D]); idx is not differentiable
struct SoftClusterLogits : torch::autograd::Function<SoftClusterLogits> {
  static variable_list forward(AutogradContext* ctx, const Tensor& feats, const Tensor& centers,
                               const Tensor& classes, int64_t num_classes, double variance, int64_t top_d,
                               int64_t precision) {
    static auto op = find_op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, int64_t, double,
                                                        int64_t, int64_t)>("clustr_fast::soft_cluster_logits");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->set_materialize_grads(false);
    auto [out, idx] = op.call(feats, centers, classes, num_classes, variance, top_d, precision);
    ctx->mark_non_differentiable({idx});
    ctx->save_for_backward({out, idx, feats, centers, classes});
    ctx->saved_data["variance"] = variance;
    return {out, idx};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = find_op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                        const Tensor&, const Tensor&, double)>(
        "clustr_fast::soft_cluster_logits_backward");
    if (!grads[0].defined()) return no_grads(7);
    const auto s = ctx->get_saved_variables();
    auto [gf, gc] = op.call(grads[0].contiguous(), s[0], s[1], s[2], s[3], s[4],
                            ctx->saved_data["variance"].toDouble());
    return {gf, gc, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor> soft_cluster_logits_autograd(const Tensor& feats, const Tensor& centers,
                                                        const Tensor& classes, int64_t num_classes, double variance,
                                                        int64_t top_d, int64_t precision) {
  auto out = SoftClusterLogits::apply(feats, centers, classes, num_classes, variance, top_d, precision);
  return {out[0], out[1]};
}

// ---- magnet_loss_fwd: (per-row losses [N], stats [3, N]); stats are not differentiable
struct MagnetLoss : torch::autograd::Function<MagnetLoss> {
  static variable_list forward(AutogradContext* ctx, const Tensor& feats, const Tensor& centers,
                               const Tensor& assign, const Tensor& classes, const OptTensor& valid, const Tensor& var,
                               double alpha, double eps) {
    static auto op = find_op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                        const OptTensor&, const Tensor&, double, double)>(
        "clustr_fast::magnet_loss_fwd");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->set_materialize_grads(false);
    auto [loss, stats] = op.call(feats, centers, assign, classes, valid, var, alpha, eps);
    ctx->mark_non_differentiable({stats});
    ctx->save_for_backward({feats, centers, assign, classes, valid.value_or(Tensor()), var, loss, stats});
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["eps"] = eps;
    return {loss, stats};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = find_op<std::tuple<Tensor, Tensor, Tensor>(
        const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&,
        const Tensor&, const Tensor&, double, double)>("clustr_fast::magnet_loss_bwd");
    if (!grads[0].defined()) return no_grads(8);
    const auto s = ctx->get_saved_variables();
    auto [gf, gc, gv] = op.call(grads[0].contiguous(), s[0], s[1], s[2], s[3], optional_of(s[4]), s[5], s[6],
                                s[7], ctx->saved_data["alpha"].toDouble(), ctx->saved_data["eps"].toDouble());
    return {gf, gc, Tensor(), Tensor(), Tensor(), gv, Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor> magnet_loss_fwd_autograd(const Tensor& feats, const Tensor& centers, const Tensor& assign,
                                                    const Tensor& classes, const OptTensor& valid, const Tensor& var,
                                                    double alpha, double eps) {
  auto out = MagnetLoss::apply(feats, centers, assign, classes, valid, var, alpha, eps);
  return {out[0], out[1]};
}

// ---- magnet_loss_fused: (total, grad_feats, grad_centers, grad_var) in one pass; the backward
// scales the saved gradients by grad_output
struct MagnetLossFused : torch::autograd::Function<MagnetLossFused> {
  static variable_list forward(AutogradContext* ctx, const Tensor& feats, const Tensor& centers,
                               const Tensor& assign, const Tensor& classes, const OptTensor& valid,
                               const OptTensor& var, double alpha, double eps, double weight) {
    static auto op = find_op<std::tuple<Tensor, Tensor, Tensor, Tensor>(
        const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, double, double,
        double)>("clustr_fast::magnet_loss_fused");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->set_materialize_grads(false);
    auto [total, gf, gc, gv] = op.call(feats, centers, assign, classes, valid, var, alpha, eps, weight);
    ctx->mark_non_differentiable({gf, gc, gv});
    ctx->save_for_backward({gf, gc, gv});
    ctx->saved_data["has_var"] = var.has_value();
    return {total, gf, gc, gv};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return no_grads(9);
    const auto s = ctx->get_saved_variables();
    const Tensor& g = grads[0];
    Tensor gv;
    if (ctx->saved_data["has_var"].toBool()) gv = s[2] * g.to(s[2].scalar_type());
    return {s[0] * g.to(s[0].scalar_type()), s[1] * g.to(s[1].scalar_type()), Tensor(), Tensor(), Tensor(), gv,
            Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> magnet_loss_fused_autograd(const Tensor& feats, const Tensor& centers,
                                                                      const Tensor& assign, const Tensor& classes,
                                                                      const OptTensor& valid, const OptTensor& var,
                                                                      double alpha, double eps, double weight) {
  auto out = MagnetLossFused::apply(feats, centers, assign, classes, valid, var, alpha, eps, weight);
  return {out[0], out[1], out[2], out[3]};
}

// ---- magnet_loss_batch: (losses [N], total = sum_i w_i loss_i, d total / d feats or [0, d]).
// d/dfeats of (gL . losses + gT total) = d/dfeats sum_i (gL_i + gT w_i) loss_i: the saved gradient
// times gT when only the total has a gradient, else the op once more with row weights gL + gT w.
struct MagnetLossBatch : torch::autograd::Function<MagnetLossBatch> {
  using Op = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, double,
                                                double, double, const OptTensor&, double, bool);
  static variable_list forward(AutogradContext* ctx, const Tensor& feats, const Tensor& ids, const Tensor& classes,
                               const OptTensor& variance, double variance_value, double alpha, double eps,
                               const OptTensor& row_weight, double weight, bool with_grad) {
    static auto op = find_op<Op>("clustr_fast::magnet_loss_batch");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->set_materialize_grads(false);
    auto [loss, total, grad] =
        op.call(feats, ids, classes, variance, variance_value, alpha, eps, row_weight, weight, with_grad);
    ctx->mark_non_differentiable({grad});
    ctx->save_for_backward({feats, ids, classes, variance.value_or(Tensor()), row_weight.value_or(Tensor()), grad});
    ctx->saved_data["variance_value"] = variance_value;
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["weight"] = weight;
    ctx->saved_data["with_grad"] = with_grad;
    return {loss, total, grad};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = find_op<Op>("clustr_fast::magnet_loss_batch");
    const auto s = ctx->get_saved_variables();
    const Tensor &g_loss = grads[0], &g_total = grads[1];
    if (!g_loss.defined() && !g_total.defined()) return no_grads(10);
    Tensor gf;
    if (!g_loss.defined() && ctx->saved_data["with_grad"].toBool()) {
      gf = s[5] * g_total.to(s[5].scalar_type());
    } else {
      const Tensor& rw = s[4];
      const double weight = ctx->saved_data["weight"].toDouble();
      Tensor w = g_loss.defined() ? g_loss : at::zeros({s[0].size(0)}, s[0].options().dtype(g_total.scalar_type()));
      if (g_total.defined()) w = w + g_total * (rw.defined() ? rw : at::full_like(w, weight));
      gf = std::get<2>(op.call(s[0], s[1], s[2], optional_of(s[3]), ctx->saved_data["variance_value"].toDouble(),
                               ctx->saved_data["alpha"].toDouble(), ctx->saved_data["eps"].toDouble(),
                               w.contiguous(), 1.0, true));
    }
    return {gf, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor> magnet_loss_batch_autograd(const Tensor& feats, const Tensor& ids,
                                                              const Tensor& classes, const OptTensor& variance,
                                                              double variance_value, double alpha, double eps,
                                                              const OptTensor& row_weight, double weight,
                                                              bool with_grad) {
  auto out = MagnetLossBatch::apply(feats, ids, classes, variance, variance_value, alpha, eps, row_weight, weight,
                                    with_grad);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(clustr_fast, Autograd, m) {
  m.impl("pairwise_sqdist", &pairwise_sqdist_autograd);
  m.impl("soft_cluster_logits", &soft_cluster_logits_autograd);
  m.impl("magnet_loss_fwd", &magnet_loss_fwd_autograd);
  m.impl("magnet_loss_fused", &magnet_loss_fused_autograd);
  m.impl("magnet_loss_batch", &magnet_loss_batch_autograd);
}

}  // namespace clustr_fast
