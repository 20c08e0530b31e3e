// Stand-in for nvcc's crt/host_config.h (see host_defines.h): nothing to configure for a
// host-only translation unit.
#pragma once
