// Plugging your own feature map and positional encoding into the core: two plain classes, no base class.
// The core checks them at compile time (a missing member fails a static_assert that names it), and the
// result is verified here against the exact reference built from the same ψ, κ.
#include <linrpe.hpp>

#include <cstdio>

namespace my {
using linrpe::index;
using linrpe::row_matrix;

/// φ(x) = relu(x)² + 1e-3: non-negative, so `sum` normalization is allowed.
struct squared_relu {
    static constexpr bool is_positive = true;
    index output_dim(index input_dim) const { return input_dim; }
    template <class S>
    void apply(const Eigen::Ref<const row_matrix<S>>& x, Eigen::Ref<row_matrix<S>> phi, const linrpe::feature_context&) const
    {
        phi = (x.array().max(S(0)).square() + S(1e-3)).matrix();
    }
    // Optional, for training: the VJP hook. dx = J_φ(x)ᵀ dphi, given the rows x and their features phi =
    // apply(x); here φ'(x) = 2·relu(x). Without it the map still works forward; attn.backward() then stops
    // with a static_assert that names `apply_backward`.
    template <class S>
    void apply_backward(const Eigen::Ref<const row_matrix<S>>& x, const Eigen::Ref<const row_matrix<S>>& /*phi*/,
                        const Eigen::Ref<const row_matrix<S>>& dphi, Eigen::Ref<row_matrix<S>> dx,
                        const linrpe::feature_context&) const
    {
        dx = (dphi.array() * S(2) * x.array().max(S(0))).matrix();
    }
};

/// A post-feature encoding T(x, s) = (−1)^s x: unitary, and ⟨T(q, s), T(k, t)⟩ = (−1)^{t−s} ⟨q, k⟩ depends
/// only on t − s (LRPE with every angle π). Scores change sign, so it refuses `sum` normalization.
struct alternating {
    using scalar_type = float;
    static constexpr bool has_pre_feature = false;
    static constexpr bool has_post_feature = true;
    static constexpr bool has_mixing = false;
    bool preserves_positivity(index max_offset) const { return max_offset == 0; }
    index post_output_dim(index feature_dim) const { return feature_dim; }
    template <class S>
    void encode_post(const Eigen::Ref<const row_matrix<S>>& phi, Eigen::Ref<row_matrix<S>> out, index first_position,
                     index /*head*/, linrpe::role) const
    {
        for (index i = 0; i < phi.rows(); ++i) out.row(i) = ((first_position + i) % 2 ? S(-1) : S(1)) * phi.row(i);
    }
    // The post-feature stage's VJP hook: dphi = T_sᵀ dpsi for the stage's input rows phi; T is its own
    // transpose. `grad` receives the gradient of learnable parameters (P = gradient_size() doubles of this
    // head, added to); this encoding learns nothing, so it declares no parameter_gradients and ignores it.
    template <class S>
    void encode_post_backward(const Eigen::Ref<const row_matrix<S>>& /*phi*/, const Eigen::Ref<const row_matrix<S>>& dpsi,
                              Eigen::Ref<row_matrix<S>> dphi, index first_position, index head, linrpe::role which,
                              double* /*grad*/) const
    {
        encode_post<S>(dpsi, dphi, first_position, head, which);
    }
};
} // namespace my

int main()
{
    linrpe::options<float> opt;
    opt.mask = linrpe::masking::causal;
    opt.norm = linrpe::normalization::rms;
    const linrpe::linear_attention<my::squared_relu, my::alternating, float> attn({}, {}, opt);
    const linrpe::row_matrix<float> q = linrpe::row_matrix<float>::Random(300, 16), k = linrpe::row_matrix<float>::Random(300, 16),
                                    v = linrpe::row_matrix<float>::Random(300, 8);
    const linrpe::row_matrix<float> out = attn(q, k, v, /*head=*/0, /*first_position=*/41);
    const auto ref = linrpe::reference::kernel_attention(attn.features(q, linrpe::role::query, 0, 41),
                                                         attn.features(k, linrpe::role::key, 0, 41), v,
                                                         attn.mixing_matrix(300, 300, 0, 41, 41), opt.norm, opt.eps);
    const double err = (out.cast<double>() - ref).norm() / ref.norm();
    std::printf("custom feature map + custom positional encoding: relative error vs exact reference %.2e\n", err);
    // float, N = 300, M = 16: rounding ~ (N + M)·2^-24 ≈ 2e-5 at worst; a wrong encoding gives O(1).
    if (!(err < 1e-4)) return 1;

    // Gradients through both hooks, checked against the exact reference backward: dΨ, dΚ, dV of the
    // explicit formula, then dφ = T_sᵀ dψ and φ's VJP, in double.
    const linrpe::row_matrix<float> dout = linrpe::row_matrix<float>::Random(300, 8);
    linrpe::row_matrix<float> dq(300, 16), dk(300, 16), dv(300, 8);
    attn.backward(q, k, v, dout, dq, dk, dv, /*head=*/0, /*q_first=*/41);
    const auto g = linrpe::reference::kernel_attention_backward(attn.features(q, linrpe::role::query, 0, 41),
                                                                attn.features(k, linrpe::role::key, 0, 41), v,
                                                                attn.mixing_matrix(300, 300, 0, 41, 41), dout, opt.norm, opt.eps);
    linrpe::row_matrix<double> dphi(300, 16), dq_ref(300, 16);
    attn.positional().encode_post_backward<double>(linrpe::row_matrix<double>(), g.dpsi, dphi, 41, 0, linrpe::role::query, nullptr);
    my::squared_relu().apply_backward<double>(q.cast<double>(), linrpe::row_matrix<double>(), dphi, dq_ref, {});
    const double err_dq = (dq.cast<double>() - dq_ref).norm() / dq_ref.norm(), err_dv = (dv.cast<double>() - g.dv).norm() / g.dv.norm();
    std::printf("backward: relative error of dq %.2e, dv %.2e vs the exact reference backward\n", err_dq, err_dv);
    // Same rounding argument as the forward, times the condition of the rms seed (~ a few): 1e-3.
    return err_dq < 1e-3 && err_dv < 1e-3 ? 0 : 1;
}
