// The accept loop of a listening socket we own the descriptor of (UNIX or TCP), driven by the event loop
// through the addon's Poller: what libuv's uv__server_io does for Node's servers, but handing out the
// accepted descriptors themselves (nonblocking, close-on-exec) for the caller to wrap or pass on.
import { VfioError } from '../errors.ts';
import { native, type Poller } from './addon.ts';

/** accept() calls per readable event before yielding to the rest of the loop (epoll is level-triggered). */
const ACCEPTS_PER_EVENT = 32;
/** How long accept() rests after running out of fds (EMFILE), instead of spinning on a readable socket. */
const ACCEPT_BACKOFF_MS = 100;

export interface FdAcceptorHandlers {
  /** A new connection's descriptor, now the handler's to close. */
  connection(fd: number): void;
  error(err: Error): void;
}

export class FdAcceptor {
  #fd: number;
  #poller: Poller;
  #closed = false;

  /** Starts accepting on `fd` (a listening socket); the descriptor becomes the acceptor's to close. */
  constructor(
    fd: number,
    private readonly handlers: FdAcceptorHandlers,
  ) {
    this.#fd = fd;
    this.#poller = new (native().Poller)(fd, (err, readable) => this.#onPoll(err, readable));
    this.#poller.start(true, false);
  }

  get fd(): number {
    return this.#fd;
  }

  /** Stops accepting and closes the listening descriptor. Accepted connections stay open. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#poller.close();
    native().close(this.#fd);
    this.#fd = -1;
  }

  ref(): void {
    if (!this.#closed) this.#poller.ref();
  }

  unref(): void {
    if (!this.#closed) this.#poller.unref();
  }

  #onPoll(err: number, readable: boolean): void {
    if (this.#closed) return;
    if (err !== 0) {
      this.handlers.error(new VfioError(err, 'poll on a listening socket failed'));
      return;
    }
    if (!readable) return;
    for (let i = 0; i < ACCEPTS_PER_EVENT && !this.#closed; i++) {
      let fd: number;
      try {
        fd = native().accept(this.#fd);
      } catch (e) {
        const code = (e as { code?: string }).code;
        if (code === 'EMFILE' || code === 'ENFILE' || code === 'ENOBUFS' || code === 'ENOMEM') this.#backoff();
        this.handlers.error(e as Error);
        return;
      }
      if (fd < 0) return;
      this.handlers.connection(fd);
    }
  }

  #backoff(): void {
    this.#poller.stop();
    setTimeout(() => {
      if (!this.#closed) this.#poller.start(true, false);
    }, ACCEPT_BACKOFF_MS).unref();
  }
}
