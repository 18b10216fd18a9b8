import json
import numpy as np
import scipy.linalg, scipy.optimize, scipy.sparse, scipy.stats
a = np.arange(1, 17, dtype=float).reshape(4, 4) + np.eye(4) * 10
res = scipy.optimize.minimize_scalar(lambda x: (x - 2) ** 2)
print(json.dumps({"det": round(float(scipy.linalg.det(a)), 3), "min": round(float(res.x), 3),
                  "nnz": int(scipy.sparse.identity(5).nnz), "p": round(float(scipy.stats.norm.cdf(0)), 3)}),
      flush=True)
