#ifndef CCGATE_CVULKAN_SHIM_H
#define CCGATE_CVULKAN_SHIM_H
#include <vulkan/vulkan.h>
#endif
