// The vfio-user device server: one device per UNIX socket (created 0600), one client at a time. The
// server outlives its clients: when the VMM disconnects or dies, the session is cleaned up and the next
// client is accepted, as a device process does across a VMM restart. A second client while one is
// connected is refused with an EBUSY error reply and closed.

import { EventEmitter } from 'node:events';
import { Errno } from '../abi/errno.ts';
import { encodeErrorReply } from '../abi/vfio-user/header.ts';
import { SERVER_MAX_MSG_SIZE } from '../abi/vfio-user/limits.ts';
import { FdServer, type FdSocket, MAX_FDS_PER_MESSAGE } from '../native/fd-socket.ts';
import { Connection } from './connection.ts';
import type { HostedDevice } from './hosted-device.ts';
import { Session } from './session.ts';

/** How long a newcomer waits for the current client's hangup to be seen before it is refused as EBUSY. */
const RECONNECT_GRACE_MS = 500;

export interface ServerOptions {
  /** Receives one line per notable event (bad requests, connects, disconnects). */
  log?: (line: string) => void;
  /** How long a server→client request (message DMA) may wait for its reply. */
  requestTimeoutMs?: number;
  /** The send buffer each connection asks for (ConnectionOptions.sendBuffer). */
  sendBuffer?: number;
}

export interface ServerEvents {
  session: [session: Session];
  disconnect: [];
}

export class VfioUserServer extends EventEmitter<ServerEvents> {
  // Per-command handlers enforce how many fds each message may carry (with an error reply); the socket
  // only refuses what no message could legitimately carry.
  private readonly listener = new FdServer();
  private current: { conn: Connection; session: Session } | null = null;
  private readonly log: (line: string) => void;
  /** Clients accepted so far (refused ones not counted). */
  sessions = 0;

  constructor(
    readonly host: HostedDevice,
    private readonly options: ServerOptions = {},
  ) {
    super();
    this.log = options.log ?? (() => {});
    this.listener.on('connection', (socket) => this.accept(socket));
    this.listener.on('error', (err) => this.log(`listener: ${err.message}`));
  }

  listen(path: string): this {
    this.listener.listen(path);
    return this;
  }

  get path(): string | null {
    return this.listener.path;
  }

  get session(): Session | null {
    return this.current?.session ?? null;
  }

  close(): void {
    this.current?.conn.close();
    this.listener.close();
  }

  private accept(socket: FdSocket): void {
    if (this.current) {
      // A client that closes and reconnects at once may arrive before its old connection's hangup has been
      // read (it is pending on that socket already): give that a moment before calling the device busy.
      socket.pause();
      const timer = setTimeout(() => {
        this.off('disconnect', retry);
        socket.resume();
        this.refuse(socket);
      }, RECONNECT_GRACE_MS);
      const retry = () => {
        clearTimeout(timer);
        socket.resume();
        this.accept(socket);
      };
      this.once('disconnect', retry);
      return;
    }
    const conn = new Connection(socket, {
      maxMsgSize: SERVER_MAX_MSG_SIZE,
      maxFds: MAX_FDS_PER_MESSAGE,
      requestTimeoutMs: this.options.requestTimeoutMs,
      sendBuffer: this.options.sendBuffer,
    });
    const session = new Session(conn, this.host, this.log);
    this.current = { conn, session };
    this.sessions++;
    this.log(`client ${this.sessions} connected`);
    conn.on('close', () => {
      if (this.current?.conn === conn) this.current = null;
      this.emit('disconnect');
    });
    this.emit('session', session);
  }

  /** Answers the intruder's first message with EBUSY and hangs up, so it sees why rather than a reset. */
  private refuse(socket: FdSocket): void {
    this.log('refused a second client: the device already has one');
    const conn = new Connection(socket, { maxMsgSize: SERVER_MAX_MSG_SIZE, maxFds: MAX_FDS_PER_MESSAGE });
    const timer = setTimeout(() => conn.close(), 5000);
    timer.unref();
    conn.once('command', (m) => {
      socket.write(encodeErrorReply(m.header, Errno.EBUSY));
      socket.end();
    });
    conn.on('close', () => clearTimeout(timer));
  }
}
