/*
 * TCP listening sockets whose descriptor is ours (libuv's uv_tcp_bind + uv_listen, without the handle):
 * a migration destination hands each accepted connection's fd to whoever reads it, a multifd channel
 * thread among them, which Node's net.Server cannot do with public API. Accept is socket.c's vn_accept.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <unistd.h>

#include "vfio_native.h"

bool vn_get_inet(napi_env env, napi_value v, int port, struct sockaddr_storage* ss, socklen_t* alen) {
  char host[INET6_ADDRSTRLEN + 1];
  size_t hlen = 0;
  if (napi_get_value_string_utf8(env, v, host, sizeof host, &hlen) != napi_ok) {
    vn_throw_type(env, "address must be a string");
    return false;
  }
  if (hlen >= INET6_ADDRSTRLEN) {
    vn_throw_errno(env, EINVAL, "inet_pton", "(address too long)");
    return false;
  }
  memset(ss, 0, sizeof *ss);
  struct sockaddr_in* a4 = (struct sockaddr_in*)ss;
  struct sockaddr_in6* a6 = (struct sockaddr_in6*)ss;
  if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    *alen = sizeof *a4;
  } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
    *alen = sizeof *a6;
  } else {
    vn_throw_errno(env, EINVAL, "inet_pton", host);
    return false;
  }
  return true;
}

/* listenTcp(address, port, backlog): address is numeric IPv4 or IPv6 (resolve names first); port 0 picks one. */
napi_value vn_listen_tcp(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int64_t port, backlog;
  struct sockaddr_storage ss;
  socklen_t alen;
  if (!vn_args(env, info, 3, argv, NULL)) return NULL;
  if (!vn_get_int(env, argv[1], "port", 0, 65535, &port) || !vn_get_int(env, argv[2], "backlog", 0, INT32_MAX, &backlog) ||
      !vn_get_inet(env, argv[0], (int)port, &ss, &alen))
    return NULL;
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return vn_throw_errno(env, errno, "socket", NULL);
  int one = 1, zero = 0;
  /* As Node's listen: a restarted destination may rebind a port in TIME_WAIT; "::" also takes IPv4. */
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      (ss.ss_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero) != 0)) {
    int err = errno;
    close(fd);
    return vn_throw_errno(env, err, "setsockopt", NULL);
  }
  const char* failed = bind(fd, (struct sockaddr*)&ss, alen) != 0 ? "bind" : listen(fd, (int)backlog) != 0 ? "listen" : NULL;
  if (failed != NULL) {
    int err = errno;
    close(fd);
    return vn_throw_errno(env, err, failed, NULL);
  }
  return vn_int(env, fd);
}

/* localPort(fd): the port a TCP socket is bound to (getsockname). */
napi_value vn_local_port(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!vn_args(env, info, 1, argv, NULL) || !vn_get_fd(env, argv[0], "fd", &fd)) return NULL;
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr*)&ss, &len) != 0) return vn_throw_errno(env, errno, "getsockname", NULL);
  if (ss.ss_family == AF_INET) return vn_int(env, ntohs(((struct sockaddr_in*)&ss)->sin_port));
  if (ss.ss_family == AF_INET6) return vn_int(env, ntohs(((struct sockaddr_in6*)&ss)->sin6_port));
  return vn_throw_errno(env, EAFNOSUPPORT, "getsockname", "(not a TCP socket)");
}

/* tcpSocket(address): an unconnected TCP socket (nonblocking, close-on-exec) of the numeric address's family,
 * for connectTcp (chanio.c). Made apart from the connect so that its owner can close it whatever happens
 * to the thread that connects it. */
napi_value vn_tcp_socket(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  struct sockaddr_storage ss;
  socklen_t alen;
  if (!vn_args(env, info, 1, argv, NULL) || !vn_get_inet(env, argv[0], 0, &ss, &alen)) return NULL;
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return vn_throw_errno(env, errno, "socket", NULL);
  return vn_int(env, fd);
}

/*
 * setNotsentLowat(fd, bytes): TCP_NOTSENT_LOWAT, the most the kernel keeps of this socket's data not yet
 * sent (writes wait, and poll reports no room, above it); returns the value read back. Bytes in flight
 * are not limited by it (the congestion window and send buffer are), so a long link still fills.
 */
napi_value vn_set_notsent_lowat(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  int64_t bytes;
  if (!vn_args(env, info, 2, argv, NULL) || !vn_get_fd(env, argv[0], "fd", &fd) ||
      !vn_get_int(env, argv[1], "bytes", 1, INT32_MAX, &bytes))
    return NULL;
  return vn_setsockopt_int(env, fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, (int)bytes);
}
