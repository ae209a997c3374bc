// Built against an installed linrpe (find_package(linrpe CONFIG REQUIRED)): one causal head, checked
// against the library's own exact reference.
#include <linrpe.hpp>

#include <cstdio>

int main()
{
    using namespace linrpe;
    using linrpe::index;
    const row_matrix<double> q = row_matrix<double>::Random(257, 32), k = row_matrix<double>::Random(257, 32),
                             v = row_matrix<double>::Random(257, 16);
    options<double> opt;
    opt.mask = masking::causal;
    linear_attention<feature_maps::elu_plus_one, positional::none, double> attn({}, {}, opt);
    const row_matrix<double> out = attn(q, k, v);
    const row_matrix<double> ref = reference::kernel_attention(attn.features(q, role::query), attn.features(k, role::key), v,
                                                               attn.mixing_matrix(257, 257), opt.norm, opt.eps);
    const double err = (out - ref).norm() / ref.norm();
    std::printf("linrpe %s consumer: relative error %.3g\n", LINRPE_VERSION_STRING, err);
    return err < 1e-12 ? 0 : 1; // double, N = 257: rounding is ~1e-15; 1e-12 leaves 1000x headroom
}
