// Serving a device of one's own: host it (its regions and migration interface) and listen on a vfio-user
// socket, as libvfio-user's vfu_create_ctx + vfu_realize_ctx + vfu_attach_ctx do for a C device. What
// `vfio-migrate serve` does for the sample devices, for any DeviceModel.

import type { DeviceModel } from '../device/device-model.ts';
import { HostedDevice, type HostOptions } from './hosted-device.ts';
import { VfioUserServer } from './server.ts';

export interface ServeDeviceOptions extends Partial<HostOptions> {
  /** UNIX socket to create (mode 0600). */
  socket: string;
  /** One line per notable event (connects, disconnects, refused requests). */
  log?: (line: string) => void;
  /** The send buffer the client's connection asks for (ConnectionOptions.sendBuffer). */
  sendBuffer?: number;
}

export interface ServedDevice {
  readonly host: HostedDevice;
  readonly server: VfioUserServer;
  /** The socket path, as created. */
  readonly path: string;
  /** Stops listening, drops the client, and closes the device. */
  close(): void;
}

export function serveDevice(device: DeviceModel, options: ServeDeviceOptions): ServedDevice {
  const { socket, log, sendBuffer, ...hostOptions } = options;
  const host = new HostedDevice(device, { dataSection: 'mmapped', ...hostOptions });
  let server: VfioUserServer;
  try {
    server = new VfioUserServer(host, { log, sendBuffer }).listen(socket);
  } catch (err) {
    host.close();
    throw err;
  }
  return {
    host,
    server,
    path: server.path ?? socket,
    close() {
      server.close();
      host.close();
    },
  };
}
