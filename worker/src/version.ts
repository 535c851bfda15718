/** The implementation version reported by GET /v1/health (kept equal to package.json). */
export const VERSION = "0.1.0";
