#pragma once
/// \file
/// \brief Aggregate header: everything public in linrpe.

#include "linrpe/version.hpp"
#include "linrpe/fwd.hpp"
#include "linrpe/types.hpp"
#include "linrpe/errors.hpp"
#include "linrpe/views.hpp"
#include "linrpe/random/philox_stream.hpp"
#include "linrpe/feature_maps/identity.hpp"
#include "linrpe/feature_maps/elu_plus_one.hpp"
#include "linrpe/feature_maps/relu.hpp"
#include "linrpe/feature_maps/favor.hpp"
#include "linrpe/feature_maps/trig_features.hpp"
#include "linrpe/positional/none.hpp"
#include "linrpe/positional/lrpe.hpp"
#include "linrpe/positional/sine_spe.hpp"
#include "linrpe/positional/conv_spe.hpp"
#include "linrpe/linear_attention.hpp"
#include "linrpe/decoder.hpp"
#include "linrpe/reference/kernel_attention.hpp"
#include "linrpe/reference/softmax_attention.hpp"
#include "linrpe/reference/softmax_rpe_attention.hpp"
