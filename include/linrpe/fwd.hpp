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
namespace positional {
struct none;
} // namespace positional
} // namespace linrpe
