// cuda_emu: streams and events, asynchronous and adversarial, so that missing
// synchronisation shows up without a GPU (see cuda_emu/emu.h).
//
// Work on a created stream (a kernel launch, cudaMemcpyAsync, cudaMemsetAsync,
// cublasLtMatmul, cudaEventRecord, cudaStreamWaitEvent) is not run by the call
// that issues it: it is queued on the stream, one queue per stream, each
// operation numbered by a global sequence number (the order the host issued it).
// Queued work runs as late as possible, when the host needs it done:
//   cudaStreamSynchronize(s)    s's queue, and whatever its waits wait for
//   cudaEventSynchronize(e), cudaEventQuery(e)
//                               up to e's latest record, and what that needs
//   cudaDeviceSynchronize, cudaFree, cudaFreeHost (the GPU synchronises the device
//                               there too), cudaStreamDestroy (that stream)
//   a default-stream operation  the pending work of every blocking stream (one
//                               created without cudaStreamNonBlocking: the legacy
//                               default-stream rule), then the operation itself;
//                               cudaStreamWaitEvent(0, e) also runs up to e's record.
// Default-stream (null) work runs at once, so it never sees work still queued on
// a non-blocking stream. Among the queues allowed to advance, the one whose next
// operation was issued LAST goes first: wherever no event orders two streams,
// their work runs in the reverse of program order, so a missing
// cudaStreamWaitEvent changes the result; a host write to pinned memory before
// the copy that reads it has run, or a host read of a download before the sync,
// sees the wrong data; a block that the caching allocator hands to the next user
// while a stream still uses it is overwritten under that stream.
//
// Events: cudaEventRecord(e, s) bumps e's generation and queues a record op that
// marks that generation complete (and notes the host time, for
// cudaEventElapsedTime). cudaStreamWaitEvent(s, e) queues a wait for the record
// op of e's generation at the time of the call (CUDA's semantics: a later
// re-record does not move it); an event never recorded, or complete, waits for
// nothing. A wait always names an op issued before it, so the op with the
// smallest sequence number among those needed can always run: no deadlock.
//
// Single host thread: the queues are not locked; the engine drives the GPU from
// one thread. A fault inside deferred work (an nq::Error from a kernel) is
// thrown by the call that ran it (a synchronisation), naming the kernel and its
// launch site; the failed operation is dropped, the rest stay queued.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>

namespace {

struct Op {
  uint64_t seq;                 // issue order, over all streams (from 1)
  uint64_t after = 0;           // a wait: runs once op `after` (an event's record) has run
  std::function<void()> work;   // empty for a wait
};

struct Stream {
  bool blocking;          // created without cudaStreamNonBlocking: ordered with the default stream
  std::deque<Op> queue;   // not yet run, in issue order
};

struct Event {
  unsigned flags = 0;
  uint64_t generation = 0;  // cudaEventRecord calls so far
  uint64_t completed = 0;   // the latest generation whose record has run (== generation: complete)
  uint64_t record_seq = 0;  // the queued record op of `generation` (while not complete)
  std::chrono::steady_clock::time_point when;  // host time the completed record ran
  bool complete() const { return completed == generation; }
};

uint64_t next_seq = 1;
std::map<uint64_t, Stream*> pending;  // every queued op's seq -> its stream
std::map<const void*, std::unique_ptr<Stream>> streams;
std::map<const void*, std::shared_ptr<Event>> events;  // shared: a queued record outlives cudaEventDestroy

cudaError_t fail(cudaError_t e) {
  cuda_emu::set_last_error(e);
  return e;
}

Stream* stream_of(cudaStream_t s) {
  auto it = streams.find(s);
  return it == streams.end() ? nullptr : it->second.get();
}
Event* event_of(cudaEvent_t e) {
  auto it = events.find(e);
  return it == events.end() ? nullptr : it->second.get();
}

uint64_t enqueue(Stream& s, Op op) {
  op.seq = next_seq++;
  pending[op.seq] = &s;
  s.queue.push_back(std::move(op));
  return s.queue.back().seq;
}

// Per stream, the last op that must run (ops of a stream run in order, so a prefix).
using Needed = std::map<Stream*, uint64_t>;

// Adds op `seq`, the ops before it on its stream and (recursively) the records its
// waits wait for to `need`. Nothing when it has run already.
void require(uint64_t seq, Needed& need) {
  auto it = pending.find(seq);
  if (it == pending.end()) return;
  Stream* s = it->second;
  uint64_t& limit = need[s];  // (std::map: stays valid while require inserts)
  if (limit >= seq) return;
  const uint64_t from = limit;
  limit = seq;
  for (const Op& op : s->queue) {
    if (op.seq > seq) break;
    if (op.seq > from && op.after) require(op.after, need);
  }
}
void require_stream(Stream& s, Needed& need) {
  if (!s.queue.empty()) require(s.queue.back().seq, need);
}

// Runs the ops in `need`, each stream in order. Of the streams whose next needed op
// may run (not a wait for a record still queued), the one issued last goes first.
void run(const Needed& need) {
  for (;;) {
    Stream* pick = nullptr;
    for (const auto& [s, limit] : need) {
      if (s->queue.empty() || s->queue.front().seq > limit) continue;
      const Op& head = s->queue.front();
      if (head.after && pending.count(head.after)) continue;
      if (!pick || head.seq > pick->queue.front().seq) pick = s;
    }
    if (!pick) return;  // all needed ops ran (the oldest needed op is always runnable)
    Op op = std::move(pick->queue.front());
    pick->queue.pop_front();
    pending.erase(op.seq);
    if (op.work) op.work();
  }
}

void synchronize_stream(Stream& s) {
  Needed need;
  require_stream(s, need);
  run(need);
}
void synchronize_record(const Event& e) {
  if (e.complete()) return;
  Needed need;
  require(e.record_seq, need);
  run(need);
}
// The legacy default-stream rule: a default-stream operation starts after the
// blocking streams' earlier work.
void synchronize_blocking_streams() {
  Needed need;
  for (auto& [handle, s] : streams)
    if (s->blocking) require_stream(*s, need);
  run(need);
}

}  // namespace

namespace cuda_emu {

int submit(CUstream_st* stream, std::function<void()> work) {
  if (!stream) {
    synchronize_blocking_streams();
    work();
    return cudaSuccess;
  }
  Stream* s = stream_of(stream);
  if (!s) return cudaErrorInvalidResourceHandle;
  enqueue(*s, Op{0, 0, std::move(work)});
  return cudaSuccess;
}

void synchronize_device() {
  Needed need;
  for (auto& [handle, s] : streams) require_stream(*s, need);
  run(need);
}

}  // namespace cuda_emu

// ---- streams
cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags) {
  if (!stream || (flags & ~cudaStreamNonBlocking)) return fail(cudaErrorInvalidValue);
  auto s = std::make_unique<Stream>();
  s->blocking = !(flags & cudaStreamNonBlocking);
  *stream = reinterpret_cast<cudaStream_t>(s.get());
  streams[*stream] = std::move(s);
  return cudaSuccess;
}
// The GPU lets queued work finish after the call returns; here it runs first.
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  Stream* s = stream_of(stream);
  if (!s) return fail(cudaErrorInvalidResourceHandle);
  synchronize_stream(*s);
  streams.erase(stream);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (!stream) {
    synchronize_blocking_streams();
    return cudaSuccess;
  }
  Stream* s = stream_of(stream);
  if (!s) return fail(cudaErrorInvalidResourceHandle);
  synchronize_stream(*s);
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned) {
  Event* e = event_of(event);
  Stream* s = stream ? stream_of(stream) : nullptr;
  if (!e || (stream && !s)) return fail(cudaErrorInvalidResourceHandle);
  if (e->complete()) return cudaSuccess;  // nothing to wait for
  const uint64_t record = e->record_seq;
  if (s) {
    enqueue(*s, Op{0, record, {}});
    return cudaSuccess;
  }
  return cudaError_t(cuda_emu::submit(nullptr, [e] { synchronize_record(*e); }));
}
cudaError_t cudaDeviceSynchronize() {
  cuda_emu::synchronize_device();
  return cudaSuccess;
}

// ---- events
cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags) {
  if (!event) return fail(cudaErrorInvalidValue);
  auto e = std::make_shared<Event>();
  e->flags = flags;
  *event = reinterpret_cast<cudaEvent_t>(e.get());
  events[*event] = std::move(e);
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  return events.erase(event) ? cudaSuccess : fail(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  auto it = events.find(event);
  if (it == events.end() || (stream && !stream_of(stream))) return fail(cudaErrorInvalidResourceHandle);
  std::shared_ptr<Event> e = it->second;
  const uint64_t generation = ++e->generation;
  auto mark = [e, generation] {
    if (generation <= e->completed) return;  // a later record (on another stream) ran first
    e->completed = generation;
    e->when = std::chrono::steady_clock::now();
  };
  if (!stream) return cudaError_t(cuda_emu::submit(nullptr, mark));
  e->record_seq = enqueue(*stream_of(stream), Op{0, 0, mark});
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  Event* e = event_of(event);
  if (!e) return fail(cudaErrorInvalidResourceHandle);
  synchronize_record(*e);
  return cudaSuccess;
}
// The GPU answers cudaErrorNotReady while the record is queued; here the query
// runs the work up to it (so a polling loop ends) and answers cudaSuccess.
cudaError_t cudaEventQuery(cudaEvent_t event) { return cudaEventSynchronize(event); }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  Event *a = event_of(start), *b = event_of(end);
  if (!ms || !a || !b || (a->flags & cudaEventDisableTiming) || (b->flags & cudaEventDisableTiming) ||
      !a->generation || !b->generation)
    return fail(cudaErrorInvalidResourceHandle);
  if (!a->complete() || !b->complete()) return fail(cudaErrorNotReady);
  *ms = std::chrono::duration<float, std::milli>(b->when - a->when).count();
  return cudaSuccess;
}
