import { defineConfig } from 'vite';

// Built into dist/, which is committed and embedded into the herald binary
// (api/src/portal.rs). Served at /portal/.
export default defineConfig({
  base: '/portal/',
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
  build: { outDir: 'dist', emptyOutDir: true, sourcemap: false, modulePreload: { polyfill: false } },
});
