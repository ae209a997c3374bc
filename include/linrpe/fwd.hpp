#pragma once
/// \file
/// \brief Forward declarations of linrpe's public class templates.

namespace linrpe {
template <class Scalar>
struct options;
template <class T>
class tensor_view;
template <class FeatureMap, class PositionalEncoding, class Scalar>
class linear_attention;
template <class Attention>
class decoder;
namespace feature_maps {
struct identity;
struct elu_plus_one;
struct relu;
class favor;
class trig_features;
} // namespace feature_maps
enum class lrpe_kind;
enum class lrpe_layout;
enum class lrpe_basis;
enum class lrpe_theta;
struct lrpe_options;
namespace positional {
struct none;
template <class Scalar>
class lrpe;
template <class Scalar>
class sine_spe;
template <class Scalar>
class conv_spe;
enum class conv_algorithm;
template <class Scalar>
class toeplitz_rpe;
template <class A, class B>
class compose;
} // namespace positional
namespace fft {
struct eigen;
struct fftw;
} // namespace fft
} // namespace linrpe
