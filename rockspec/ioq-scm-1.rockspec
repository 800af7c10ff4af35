rockspec_format = "3.0"
package = "ioq"
version = "scm-1"
source = {
  url = "git+file:///dev/null",  -- built from a checkout: luarocks make rockspec/ioq-scm-1.rockspec
}
description = {
  summary = "Completion-based asynchronous I/O for Lua 5.4: io_uring queues, coroutines, deadlines",
  detailed = [[
ioq gives Lua scripts a completion-based I/O queue (io_uring on Linux,
with an epoll fallback; I/O completion ports on Windows):
hand it a buffer and a descriptor, get a handle back at once, and resolve
it from a wait loop or from coroutines with ioq.run / spawn / await.
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.4",
}
external_dependencies = {
  platforms = {
    linux = {
      LIBURING = { header = "liburing.h", library = "uring" },
    },
  },
}
build = {
  type = "builtin",
  modules = {
    ioq = "lua/ioq.lua",
    ["ioq.args"] = "lua/ioq/args.lua",
    ["ioq.heap"] = "lua/ioq/heap.lua",
    ["ioq.outputs"] = "lua/ioq/outputs.lua",
    ["ioq.loop"] = "lua/ioq/loop.lua",
    ["ioq.run"] = "lua/ioq/run.lua",
    ["ioq.task"] = "lua/ioq/task.lua",
    ["ioq.objects"] = "lua/ioq/objects.lua",
    ["ioq.multishot"] = "lua/ioq/multishot.lua",
    ["ioq.signals"] = "lua/ioq/signals.lua",
    ["ioq.fs"] = "lua/ioq/fs.lua",
    ["ioq.stream"] = "lua/ioq/stream.lua",
    ["ioq.process"] = "lua/ioq/process.lua",
  },
  -- The Makefile reads these source lists too (mk/sources.lua): a new C
  -- file is added here only.
  platforms = {
    linux = {
      modules = {
        ["ioq.core"] = {
          sources = {
            "src/lioq_core.c", "src/lioq_util.c", "src/lioq_queue.c",
            "src/lioq_engine.c", "src/lioq_owner.c", "src/lioq_ops.c", "src/lioq_handle.c",
            "src/lioq_fs.c",
            "src/lioq_loop.c",
            "src/lioq_buffer.c", "src/lioq_file.c", "src/lioq_socket.c",
            "src/lioq_signal.c", "src/lioq_process.c", "src/backend_uring.c", "src/backend_epoll.c",
            "src/ioq_workers.c", "src/ioq_blocking.c",
            "src/ioq_fs_posix.c", "src/lioq_call.c",
          },
          defines = { "_GNU_SOURCE", "IOQ_HAVE_URING", "IOQ_HAVE_EPOLL" },
          libraries = { "uring", "pthread" },
          incdirs = { "$(LIBURING_INCDIR)" },
          libdirs = { "$(LIBURING_LIBDIR)" },
        },
      },
    },
    windows = {
      modules = {
        ["ioq.core"] = {
          sources = {
            "src/lioq_core.c", "src/lioq_util.c", "src/lioq_queue.c",
            "src/lioq_engine.c", "src/lioq_owner.c", "src/lioq_ops.c", "src/lioq_handle.c",
            "src/lioq_fs.c",
            "src/lioq_loop.c",
            "src/lioq_buffer.c", "src/lioq_file.c", "src/lioq_socket.c",
            "src/lioq_signal.c", "src/lioq_process.c", "src/backend_iocp.c", "src/ioq_win.c",
            "src/lioq_call.c", "src/ioq_spawn_win.c",
          },
          defines = { "IOQ_HAVE_IOCP", "_WIN32_WINNT=0x0601" },
          libraries = { "ws2_32", "mswsock" },
        },
      },
    },
  },
}
