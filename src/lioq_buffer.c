/*
** lioq_buffer.c: ioq.buffer, fixed-size byte buffers whose memory the kernel
** may write into while Lua goes on running. Touches only its own blocks,
** and pool buffers through ioq_pool_release (ioq.h); uses lioq_util.c.
*/
#include <stdlib.h>
#include <string.h>

#include "lioq.h"

/* Page alignment keeps buffers usable with O_DIRECT. */
#define BLOCK_ALIGN 4096

/* Larger than any memory, small enough that rounding up cannot overflow. */
#define MAX_BUFFER ((lua_Unsigned)1 << 48)

void lioq_block_unref(lioq_block *b) {
  if (--b->refs == 0) {
    if (b->pool != NULL)
      ioq_pool_release(b->pool, b->buf);
    else
      ioq_aligned_free(b->data);
    if (!b->embedded)
      free(b);
  }
}

static lioq_block *block_new(size_t size) {
  lioq_block *b = malloc(sizeof *b);
  void *data = NULL;
  size_t rounded = (size + BLOCK_ALIGN - 1) / BLOCK_ALIGN * BLOCK_ALIGN;
  if (b == NULL)
    return NULL;
  if (rounded < size || (data = ioq_aligned_alloc(BLOCK_ALIGN,
                                 rounded ? rounded : BLOCK_ALIGN)) == NULL) {
    free(b);
    return NULL;
  }
  b->refs = 1;
  b->size = size;
  b->busy = 0;
  b->data = data;
  b->pool = NULL;
  b->buf = -1;
  b->embedded = 0;
  return b;
}

/*
** A view of a pool buffer: a buffer userdata with its block inside it, so
** that lending a pool buffer to Lua allocates nothing. The block can
** outlive the view's reference (an op in flight holds one), never the
** userdata: every op keeps the object of the buffer it uses reachable
** until it is settled, and a queue collected with its ops settles them
** in its finalizer, before the collector frees anything.
**
** A view is made closed (lioq_buffer_push_view), before it is needed,
** and lioq_buffer_set_view then lends it `len` bytes of pool buffer
** `buf`, taking over the reference the pool lent with it (closing or
** collecting the view gives the pool buffer back). That cannot fail, so
** the engine can do it in C as the bytes arrive. A view that is closed,
** with no op still using its block, can be lent a buffer again: a pooled
** receive that is resubmitted reuses its view.
*/
typedef struct lview {
  lbuffer ub;
  lioq_block own;
} lview;

void *lioq_buffer_push_view(lua_State *L) {
  lview *v = lua_newuserdatauv(L, sizeof *v, 0);
  v->ub.block = NULL;
  v->own.refs = 0;
  luaL_setmetatable(L, LIOQ_BUFFER);
  return v;
}

int lioq_buffer_view_free(const void *view) {
  const lview *v = view;
  return v->ub.block == NULL && v->own.refs == 0;
}

int lioq_buffer_set_view(void *view, ioq_pool *pool, int buf, size_t len) {
  lview *v = view;
  if (!lioq_buffer_view_free(v))
    return 0;
  v->own.refs = 1;
  v->own.size = len;
  v->own.busy = 0;
  v->own.data = pool->mem + (size_t)buf * pool->size;
  v->own.pool = pool;
  v->own.buf = buf;
  v->own.embedded = 1;
  v->ub.block = &v->own;
  return 1;
}

/*
** ioq.buffer(size) or ioq.buffer(string). The userdata exists (empty) before
** the block is allocated, so a failed allocation leaks nothing.
*/
int lioq_buffer_new(lua_State *L) {
  size_t size;
  const char *init = NULL;
  lbuffer *ub;
  if (lua_type(L, 1) == LUA_TSTRING) {
    init = lua_tolstring(L, 1, &size);
  } else {
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 0, 1, "size must be non-negative");
    luaL_argcheck(L, (lua_Unsigned)n <= MAX_BUFFER, 1,
                  "size too large");
    size = (size_t)n;
  }
  ub = lua_newuserdatauv(L, sizeof *ub, 0);
  ub->block = NULL;
  luaL_setmetatable(L, LIOQ_BUFFER);
  ub->block = block_new(size);
  if (ub->block == NULL)
    return luaL_error(L, "not enough memory for a buffer of %I bytes",
                      (lua_Integer)size);
  if (init != NULL)
    memcpy(ub->block->data, init, size);
  else
    memset(ub->block->data, 0, size);
  return 1;
}

lioq_block *lioq_testblock(lua_State *L, int arg) {
  lbuffer *ub = lioq_toudata(L, arg, TAG_BUFFER);
  if (ub == NULL)
    return NULL;
  luaL_argcheck(L, ub->block != NULL, arg, "buffer is closed");
  return ub->block;
}

lioq_block *lioq_checkblock(lua_State *L, int arg) {
  lioq_block *b = lioq_testblock(L, arg);
  if (b == NULL)
    luaL_typeerror(L, arg, LIOQ_BUFFER);
  return b;
}

/* The block of a buffer Lua (or a new op) wants to read or change. */
lioq_block *lioq_checkidle(lua_State *L, int arg) {
  return lioq_idleblock(L, arg, lioq_checkblock(L, arg));
}

/* Turns string.sub-style positions i..j into a 0-based start and a length. */
static size_t span(lua_State *L, size_t size, int iarg, int jarg,
                   size_t *start) {
  lua_Integer i = luaL_optinteger(L, iarg, 1);
  lua_Integer j = luaL_optinteger(L, jarg, -1);
  lua_Integer n = (lua_Integer)size;
  if (i < 0) i = i < -n ? 1 : n + i + 1;
  else if (i == 0) i = 1;
  if (j < 0) j = j < -n ? 0 : n + j + 1;
  else if (j > n) j = n;
  if (i > j) {
    *start = 0;
    return 0;
  }
  *start = (size_t)(i - 1);
  return (size_t)(j - i + 1);
}

/* buf:tostring([i [, j]]) */
static int buffer_tostring(lua_State *L) {
  lioq_block *b = lioq_checkidle(L, 1);
  size_t start, len = span(L, b->size, 2, 3, &start);
  lua_pushlstring(L, (const char *)b->data + start, len);
  return 1;
}

/* The first place in `hay` (`len` bytes) where the `n` (> 0) bytes of
** `needle` occur, or NULL. */
static const unsigned char *find_bytes(const unsigned char *hay, size_t len,
                                       const unsigned char *needle,
                                       size_t n) {
  const unsigned char *end;
  if (n > len)
    return NULL;
  end = hay + (len - n) + 1;  /* one past the last place a match can start */
  while (hay < end) {
    const unsigned char *p = memchr(hay, needle[0], (size_t)(end - hay));
    if (p == NULL)
      return NULL;
    if (memcmp(p + 1, needle + 1, n - 1) == 0)
      return p;
    hay = p + 1;
  }
  return NULL;
}

/*
** buf:find(s [, i [, j]]): where the bytes of s first occur within bytes
** i..j (string.sub rules; default all): their first and last positions,
** or nil. A plain search, as string.find(..., true): a stream looks for
** its delimiter where the bytes came in, without a string of them.
*/
static int buffer_find(lua_State *L) {
  lioq_block *b = lioq_checkidle(L, 1);
  size_t n, start, len;
  const char *needle = luaL_checklstring(L, 2, &n);
  const unsigned char *at;
  luaL_argcheck(L, n > 0, 2, "non-empty string expected");
  len = span(L, b->size, 3, 4, &start);
  at = find_bytes(b->data + start, len, (const unsigned char *)needle, n);
  if (at == NULL) {
    luaL_pushfail(L);
    return 1;
  }
  lua_pushinteger(L, (lua_Integer)(at - b->data) + 1);
  lua_pushinteger(L, (lua_Integer)(at - b->data) + (lua_Integer)n);
  return 2;
}

/*
** buf:split(s [, j [, max]]): where the bytes of s first occur within
** bytes 1..j (default all), the bytes before them and the bytes after
** them up to j, as two strings; nil if they do not occur there, or occur
** only after more than `max` bytes (default: no limit). What a stream
** reading records does with a receive that holds a whole one: one call
** in place of a find and two tostrings.
*/
static int buffer_split(lua_State *L) {
  lioq_block *b = lioq_checkidle(L, 1);
  size_t n, len;
  const char *needle = luaL_checklstring(L, 2, &n);
  lua_Integer j = luaL_optinteger(L, 3, -1);
  lua_Integer size = (lua_Integer)b->size;
  lua_Integer max = luaL_optinteger(L, 4, LUA_MAXINTEGER);
  const unsigned char *at;
  size_t before;
  luaL_argcheck(L, n > 0, 2, "non-empty string expected");
  luaL_argcheck(L, max >= 0, 4, "non-negative integer expected");
  if (j < 0)  /* string.sub's rules for j */
    j = j < -size ? 0 : size + j + 1;
  else if (j > size)
    j = size;
  len = (size_t)j;
  at = find_bytes(b->data, len, (const unsigned char *)needle, n);
  before = at != NULL ? (size_t)(at - b->data) : 0;
  if (at == NULL || (lua_Unsigned)before > (lua_Unsigned)max) {
    luaL_pushfail(L);
    return 1;
  }
  lua_pushlstring(L, (const char *)b->data, before);
  lua_pushlstring(L, (const char *)at + n, len - before - n);
  return 2;
}

/* buf:set(s [, i]): copies s into the buffer from position i (default 1). */
static int buffer_set(lua_State *L) {
  lioq_block *b = lioq_checkidle(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  lua_Integer i = luaL_optinteger(L, 3, 1);
  luaL_argcheck(L, i >= 1, 3, "position must be at least 1");
  luaL_argcheck(L, (lua_Unsigned)(i - 1) <= b->size &&
                   len <= b->size - (size_t)(i - 1), 2,
                "string does not fit in the buffer");
  memcpy(b->data + (i - 1), s, len);
  return 0;
}

/* buf:fill([byte [, i [, j]]]): sets bytes i..j (default all) to byte. */
static int buffer_fill(lua_State *L) {
  lioq_block *b = lioq_checkidle(L, 1);
  lua_Integer c = luaL_optinteger(L, 2, 0);
  size_t start, len;
  luaL_argcheck(L, c >= 0 && c <= 255, 2, "byte must be in 0..255");
  len = span(L, b->size, 3, 4, &start);
  memset(b->data + start, (int)c, len);
  return 0;
}

/* buf:busy() */
static int buffer_busy(lua_State *L) {
  lioq_block *b = lioq_checkblock(L, 1);
  lua_pushboolean(L, b->busy);
  return 1;
}

static int buffer_len(lua_State *L) {
  lioq_block *b = lioq_checkblock(L, 1);
  lua_pushinteger(L, (lua_Integer)b->size);
  return 1;
}

/*
** buf:close(), <close> and __gc: drop the buffer's reference. A pending op
** keeps its own reference, so the bytes stay until the kernel is done.
*/
static int buffer_close(lua_State *L) {
  lbuffer *ub = lioq_checkudata(L, 1, TAG_BUFFER);
  if (ub->block != NULL) {
    lioq_block *b = ub->block;
    ub->block = NULL;
    lioq_block_unref(b);
  }
  return 0;
}

static int buffer_repr(lua_State *L) {
  lbuffer *ub = lioq_checkudata(L, 1, TAG_BUFFER);
  if (ub->block == NULL)
    lua_pushfstring(L, "ioq.buffer (closed): %p", (void *)ub);
  else
    lua_pushfstring(L, "ioq.buffer (%I bytes%s): %p",
                    (lua_Integer)ub->block->size,
                    ub->block->busy ? ", busy" : "", (void *)ub);
  return 1;
}

void lioq_open_buffer(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"tostring", buffer_tostring},
    {"find", buffer_find},
    {"split", buffer_split},
    {"set", buffer_set},
    {"fill", buffer_fill},
    {"busy", buffer_busy},
    {"close", buffer_close},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__len", buffer_len},
    {"__tostring", buffer_repr},
    {"__close", buffer_close},
    {"__gc", buffer_close},
    {NULL, NULL}
  };
  lioq_newclass(L, TAG_BUFFER, methods, meta);
}
