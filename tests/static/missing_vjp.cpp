// Must NOT compile: backward() on a feature map without the VJP hook stops at the static_assert naming
// `apply_backward` (the ctest compile_fail_missing_vjp builds this file and requires that message).
#include <linrpe/linear_attention.hpp>
#include <linrpe/positional/none.hpp>

namespace {
using linrpe::index;
using linrpe::row_matrix;

struct forward_only {
    static constexpr bool is_positive = true;
    index output_dim(index d) const { return d; }
    template <class S>
    void apply(const Eigen::Ref<const row_matrix<S>>& x, Eigen::Ref<row_matrix<S>> phi, const linrpe::feature_context&) const
    {
        phi = x.array().exp();
    }
};
} // namespace

int main()
{
    const linrpe::linear_attention<forward_only, linrpe::positional::none, float> attn;
    const row_matrix<float> x = row_matrix<float>::Ones(4, 2);
    row_matrix<float> dq(4, 2), dk(4, 2), dv(4, 2);
    attn.backward(x, x, x, x, dq, dk, dv);
}
