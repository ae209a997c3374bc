# Installs linrpe into a scratch prefix, then configures, builds and runs a project that only knows
# find_package(linrpe CONFIG REQUIRED). Fails on any step.
file(REMOVE_RECURSE ${WORK})
set(prefix ${WORK}/prefix)
foreach(step
    "configure-lib;${CMAKE_COMMAND};-S;${LINRPE_SOURCE};-B;${WORK}/lib;-G;${GENERATOR};-DLINRPE_BUILD_TESTS=OFF;-DLINRPE_BUILD_BENCHMARKS=OFF;-DLINRPE_BUILD_EXAMPLES=OFF;-DCMAKE_INSTALL_PREFIX=${prefix}"
    "install-lib;${CMAKE_COMMAND};--install;${WORK}/lib"
    "configure-app;${CMAKE_COMMAND};-S;${LINRPE_SOURCE}/examples/consumer;-B;${WORK}/app;-G;${GENERATOR};-DCMAKE_PREFIX_PATH=${prefix};-DCMAKE_BUILD_TYPE=Release"
    "build-app;${CMAKE_COMMAND};--build;${WORK}/app"
    "run-app;${WORK}/app/consumer")
  list(POP_FRONT step name)
  execute_process(COMMAND ${step} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer step '${name}' failed (${rc}):\n${out}\n${err}")
  endif()
  message(STATUS "consumer step '${name}' ok")
endforeach()
message(STATUS "${out}")
