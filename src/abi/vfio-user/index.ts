// vfio-user wire codecs: pure functions over payload bytes (see header.ts for framing). One file per message.

export * from './bitmap.ts';
export * from './commands.ts';
export * from './device-feature.ts';
export * from './device-info.ts';
export * from './device-reset.ts';
export * from './dirty-pages.ts';
export * from './dma-access.ts';
export * from './dma-map.ts';
export * from './dma-unmap.ts';
export * from './feature-dma-logging.ts';
export * from './feature-migration.ts';
export * from './header.ts';
export * from './irq.ts';
export * from './limits.ts';
export * from './mig-data.ts';
export * from './region-access.ts';
export * from './region-info.ts';
export * from './region-io-fds.ts';
export * from './version.ts';
export * from './write-multi.ts';
