#pragma once
/// \file
/// \brief linrpe::error and the argument checks that every public entry point runs before any work.

#include <Eigen/Core>

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

namespace linrpe {

/// \brief The one exception type of linrpe: an invalid argument, named, with expected and actual values.
///
/// Every public entry point validates its arguments in O(1) before it writes anything, and throws this
/// type (derived from std::invalid_argument, so existing handlers catch it). Kernels never throw.
class error : public std::invalid_argument {
public:
    explicit error(const std::string& what) : std::invalid_argument("linrpe: " + what) {}
};

namespace detail {

template <class... Parts>
std::string concat(const Parts&... parts)
{
    std::ostringstream os;
    (os << ... << parts);
    return os.str();
}

/// Throws "<argument>: expected <expected>, got <actual>".
template <class Expected, class Actual>
[[noreturn]] void fail(const char* argument, const Expected& expected, const Actual& actual)
{
    throw error(concat(argument, ": expected ", expected, ", got ", actual));
}

template <class T>
void require_equal(const char* argument, const T& actual, const T& expected)
{
    if (!(actual == expected)) fail(argument, expected, actual);
}

template <class T>
void require_positive(const char* argument, const T& actual)
{
    if (!(actual > T(0))) fail(argument, "a value > 0", actual);
}

template <class T>
void require_non_negative(const char* argument, const T& actual)
{
    if (!(actual >= T(0))) fail(argument, "a value >= 0", actual);
}

template <class T>
void require_finite(const char* argument, const T& actual)
{
    if (!std::isfinite(static_cast<double>(actual))) fail(argument, "a finite value", actual);
}

/// Checks every entry of an Eigen expression for finiteness (used on parameters, never on activations).
template <class Derived>
void require_all_finite(const char* argument, const Derived& values)
{
    for (Eigen::Index i = 0; i < values.size(); ++i) {
        const double v = static_cast<double>(values.data()[i]);
        if (!std::isfinite(v)) fail(argument, "finite values", concat(v, " at flat index ", i));
    }
}

inline std::string shape(long long rows, long long cols) { return concat("(", rows, ", ", cols, ")"); }

} // namespace detail
} // namespace linrpe
