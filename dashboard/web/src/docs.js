// The API reference at /api/docs: Swagger UI over the server's own /api/openapi.json, built
// into the binary so it works with no network. Calls made from it carry the dashboard's
// token when this browser tab signed in there; otherwise "Authorize" takes one.
import SwaggerUI from 'swagger-ui-dist/swagger-ui-es-bundle.js';
import 'swagger-ui-dist/swagger-ui.css';

// The dashboard's key (src/api.js), read here directly so the dashboard's own bundle stays
// as it is rather than sharing a chunk with this page.
const TOKEN_KEY = 'fieldline.token';

const ui = SwaggerUI({
  url: '/api/openapi.json',
  dom_id: '#api-docs',
  deepLinking: true,
  tryItOutEnabled: false,
  onComplete: () => {
    const signedIn = sessionStorage.getItem(TOKEN_KEY);
    if (signedIn) ui.preauthorizeApiKey('token', signedIn);
  },
});
