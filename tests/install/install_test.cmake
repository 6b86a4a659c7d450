# Driven by tests/install/CMakeLists.txt (cmake -P): install, check the tree, build and run the consumer.
cmake_minimum_required(VERSION 3.25)

function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 600)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${ARGN}\n--- stdout\n${out}\n--- stderr\n${err}")
  endif()
  set(run_out "${out}" PARENT_SCOPE)
  set(run_err "${err}" PARENT_SCOPE)
endfunction()

set(prefix "${WORK_DIR}/prefix")
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

run("cmake --install" ${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${prefix}")

# The installed tree: public headers, the static library, the CLI and the package files.
foreach(f "${INCLUDEDIR}/nibble/nibble.h" "${INCLUDEDIR}/nibble/quantize.h" "${LIBDIR}/libnibble.a"
          "${BINDIR}/nibble" "${LIBDIR}/cmake/nibble/nibbleConfig.cmake"
          "${LIBDIR}/cmake/nibble/nibbleConfigVersion.cmake" "${LIBDIR}/cmake/nibble/nibbleTargets.cmake")
  if(NOT EXISTS "${prefix}/${f}")
    message(FATAL_ERROR "not installed: ${prefix}/${f}")
  endif()
endforeach()
# The exported target points into the prefix, never back at the source or build tree.
file(GLOB targets_files "${prefix}/${LIBDIR}/cmake/nibble/nibbleTargets*.cmake")
foreach(f ${targets_files})
  file(READ "${f}" text)
  foreach(tree "${SOURCE_ROOT}" "${BUILD_DIR}")
    string(FIND "${text}" "${tree}" at)
    if(NOT at EQUAL -1)
      message(FATAL_ERROR "${f} refers to ${tree}")
    endif()
  endforeach()
endforeach()

# The installed CLI runs.
run("installed nibble config" "${prefix}/${BINDIR}/nibble" config --load-in-4bit --quant-type nf4)
string(FIND "${run_out}" "\"bnb_4bit_quant_type\": \"nf4\"" at)
if(at EQUAL -1)
  message(FATAL_ERROR "installed 'nibble config' printed:\n${run_out}")
endif()

# A consumer project built against the installed package only.
run("consumer configure" ${CMAKE_COMMAND} -S "${CONSUMER_DIR}" -B "${WORK_DIR}/consumer-build" -G "${GENERATOR}"
    "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
    "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}" "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}"
    "-DCMAKE_EXE_LINKER_FLAGS=${EXE_LINKER_FLAGS}" "-DCMAKE_PREFIX_PATH=${prefix}"
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF "-DEXPECTED_PREFIX=${prefix}")
run("consumer build" ${CMAKE_COMMAND} --build "${WORK_DIR}/consumer-build")
run("consumer run" "${WORK_DIR}/consumer-build/consumer" "${SHARED_DIR}/models/tinystories-656k"
    "${SHARED_DIR}/golden/tinystories-656k.json")
message("${run_out}")
foreach(line "4-bit round trip: ok" "float greedy matches golden: ok" "nf4 generate: Once upon a time"
             "consumer: ok")
  string(FIND "${run_out}" "${line}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "consumer output lacks '${line}':\n${run_out}\n${run_err}")
  endif()
endforeach()

file(REMOVE_RECURSE "${WORK_DIR}")
