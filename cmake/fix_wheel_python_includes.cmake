# The PyPI ROS 2 wheels were built in a manylinux container: their exported *__rosidl_generator_py targets
# name that container's /opt/python include dirs. Replace them with this interpreter's (no-op elsewhere).
function(_fix_wheel_python_includes)
  get_property(_imported DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(_t IN LISTS _imported)
    get_target_property(_inc ${_t} INTERFACE_INCLUDE_DIRECTORIES)
    if(_inc AND "${_inc}" MATCHES "/opt/python/")
      list(FILTER _inc EXCLUDE REGEX "^/opt/python/")
      list(APPEND _inc ${Python3_INCLUDE_DIRS} ${Python3_NumPy_INCLUDE_DIRS})
      set_target_properties(${_t} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_inc}")
    endif()
  endforeach()
endfunction()
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _fix_wheel_python_includes)
