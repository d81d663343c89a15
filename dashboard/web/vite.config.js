// The dashboard is built into the fieldline binary: dashboard/build.rs runs this build and
// embeds what it writes to FIELDLINE_WEB_OUT.
import { resolve } from 'node:path';
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/',
  worker: { format: 'es' },
  build: {
    outDir: process.env.FIELDLINE_WEB_OUT || 'dist',
    emptyOutDir: true,
    assetsDir: 'assets',
    chunkSizeWarningLimit: 2000,
    // Every browser the dashboard supports preloads modules itself.
    modulePreload: { polyfill: false },
    // Two pages: the dashboard, and the API reference served at /api/docs.
    rollupOptions: {
      input: {
        main: resolve(import.meta.dirname, 'index.html'),
        docs: resolve(import.meta.dirname, 'docs.html'),
      },
    },
  },
});
