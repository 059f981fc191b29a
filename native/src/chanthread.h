/* Multifd channel threads (chanthread.c): the ChannelThread class. Registered by addon.c. */
#ifndef VFIO_NATIVE_CHANTHREAD_H
#define VFIO_NATIVE_CHANTHREAD_H

#include <node_api.h>
#include <stdbool.h>

bool vn_chan_thread_define(napi_env env, napi_value exports);

#endif
