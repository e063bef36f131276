// Entry point MXNet calls when it loads the bertpretrain kernel library.
#include "common.h"

mxnet::ext::MXReturnValue initialize(int version) {
  if (version < 10900) {
    MX_ERROR_MSG << "bertpretrain kernels need MXNet >= 1.9.0, this is version " << version;
    return mxnet::ext::MX_FAIL;
  }
  return mxnet::ext::MX_SUCCESS;
}
