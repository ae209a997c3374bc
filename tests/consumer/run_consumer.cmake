# Consumer checks of the packaging, outside this build: `cmake -DVARIANT=... -DLINRPE_SOURCE=... -DWORK=...
# -DGENERATOR=... -P run_consumer.cmake`. Every variant builds app/ (a consumer that defines nothing itself:
# linrpe bit-identical for 1, 2, 3 threads, its own Eigen GEMM threaded) and runs it with OMP_NUM_THREADS=3.
#   install     install linrpe with OpenMP; find_package from the prefix (also builds examples/consumer),
#               then from linrpe's build tree (export(EXPORT))
#   serial      install linrpe with LINRPE_USE_OPENMP=OFF; the consumer finds it with OpenMP disabled
#   subdirectory add_subdirectory(linrpe) in the consumer's own tree
# Fails on any step.
file(REMOVE_RECURSE ${WORK})
set(app ${LINRPE_SOURCE}/tests/consumer/app)
set(lib_args -DLINRPE_BUILD_TESTS=OFF -DLINRPE_BUILD_BENCHMARKS=OFF -DLINRPE_BUILD_EXAMPLES=OFF -DCMAKE_INSTALL_PREFIX=${WORK}/prefix)
# -O1: the checks hold at any optimization level, and each variant compiles the consumer again.
set(app_args -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG")

function(run name)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer step '${name}' failed (${rc}):\n${out}\n${err}")
  endif()
  message(STATUS "consumer step '${name}' ok")
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

# Configures, builds and runs app/ (and extra sources) in ${WORK}/${dir} with the extra configure arguments.
function(check_app dir)
  run("configure ${dir}" ${CMAKE_COMMAND} -S ${app} -B ${WORK}/${dir} -G ${GENERATOR} ${app_args} ${ARGN})
  run("build ${dir}" ${CMAKE_COMMAND} --build ${WORK}/${dir})
  run("run ${dir}" ${CMAKE_COMMAND} -E env OMP_NUM_THREADS=3 ${WORK}/${dir}/consumer_check)
  message(STATUS "${last_output}")
endfunction()

if(VARIANT STREQUAL "install")
  run("configure linrpe" ${CMAKE_COMMAND} -S ${LINRPE_SOURCE} -B ${WORK}/lib -G ${GENERATOR} ${lib_args})
  run("install linrpe" ${CMAKE_COMMAND} --install ${WORK}/lib)
  check_app(app_prefix -DCMAKE_PREFIX_PATH=${WORK}/prefix -DLINRPE_CONSUMER_EXAMPLE=${LINRPE_SOURCE}/examples/consumer/main.cpp)
  run("run example consumer" ${WORK}/app_prefix/consumer)
  message(STATUS "${last_output}")
  check_app(app_build_tree -Dlinrpe_DIR=${WORK}/lib)
elseif(VARIANT STREQUAL "serial")
  run("configure linrpe" ${CMAKE_COMMAND} -S ${LINRPE_SOURCE} -B ${WORK}/lib -G ${GENERATOR} ${lib_args} -DLINRPE_USE_OPENMP=OFF)
  run("install linrpe" ${CMAKE_COMMAND} --install ${WORK}/lib)
  check_app(app_prefix -DCMAKE_PREFIX_PATH=${WORK}/prefix -DCMAKE_DISABLE_FIND_PACKAGE_OpenMP=ON)
elseif(VARIANT STREQUAL "subdirectory")
  check_app(app_subdirectory -DLINRPE_SOURCE_DIR=${LINRPE_SOURCE})
else()
  message(FATAL_ERROR "run_consumer.cmake: unknown VARIANT '${VARIANT}'")
endif()
