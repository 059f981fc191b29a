{
  # Built by scripts/build-native.js (run by `npm ci` through the root install script) against the
  # headers of the Node that runs it. C only: every file below is plain C11 with GNU extensions.
  "targets": [
    {
      "target_name": "vfio_native",
      "sources": [
        "src/addon.c",
        "src/util.c",
        "src/memory.c",
        "src/madvise.c",
        "src/eventfd.c",
        "src/socket.c",
        "src/tcp.c",
        "src/scm.c",
        "src/poller.c",
        "src/crc32c.c",
        "src/zero.c",
        "src/dirtypages.c",
        "src/pwrite.c",
        "src/chanio.c",
        "src/chanmode.c",
        "src/chanthread.c"
      ],
      # NAPI 8: instance data, detach_arraybuffer and async cleanup hooks; Node 20 has 9.
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"],
      # Node's common.gypi strips -Werror from "cflags" and adds -Wno-unused-parameter there;
      # cflags_c comes later on the command line and is not stripped, so these win.
      "cflags_c": [
        "-std=gnu11",
        "-Wall",
        "-Wextra",
        "-Wunused-parameter",
        "-Wshadow",
        "-Wstrict-prototypes",
        "-Wmissing-prototypes",
        "-Werror",
        "-fvisibility=hidden"
      ]
    }
  ]
}
