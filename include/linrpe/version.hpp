#pragma once
/// \file
/// \brief linrpe version macros (CMake reads the project version from here).

#define LINRPE_VERSION_MAJOR 0
#define LINRPE_VERSION_MINOR 1
#define LINRPE_VERSION_PATCH 0
#define LINRPE_VERSION_STRING "0.1.0"
