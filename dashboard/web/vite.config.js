// The dashboard is built into the fieldline binary: dashboard/build.rs runs this build and
// embeds what it writes to FIELDLINE_WEB_OUT.
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/',
  worker: { format: 'es' },
  build: {
    outDir: process.env.FIELDLINE_WEB_OUT || 'dist',
    emptyOutDir: true,
    assetsDir: 'assets',
    chunkSizeWarningLimit: 2000,
  },
});
